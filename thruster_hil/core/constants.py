"""Physical constants [SI]. Each carries its source."""

# Earth gravitational parameter [m^3/s^2]: EGM2008 / WGS 84 (NIMA TR8350.2, 3rd ed., Table 3.1).
MU_EARTH = 3.986004418e14
# Earth equatorial radius [m]: WGS 84 semi-major axis (NIMA TR8350.2, Table 3.1).
R_EARTH = 6378137.0
# Earth flattening [-]: WGS 84 1/f = 298.257223563 (NIMA TR8350.2, Table 3.1).
F_EARTH = 1.0 / 298.257223563
# Second zonal harmonic J2 [-]: EGM2008 unnormalised C20 = -1.08262668e-3 (Pavlis et al. 2012).
J2_EARTH = 1.08262668e-3
# Earth rotation rate [rad/s]: WGS 84 (NIMA TR8350.2, Table 3.1).
OMEGA_EARTH = 7.292115e-5
# Standard gravity [m/s^2]: CGPM 1901, used to convert Isp [s] to exhaust velocity.
G0 = 9.80665
# Seconds per day [s].
DAY_S = 86400.0
