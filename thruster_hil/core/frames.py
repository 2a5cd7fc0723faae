"""Frames and attitude parameters: Euler parameters (quaternions), direction cosine matrices and
the LVLH frame. The one place a quaternion becomes a DCM.

Conventions (docs/architecture.md):

* ``q_BN = [q0, q1, q2, q3]`` are Euler parameters, scalar first (Schaub & Junkins, *Analytical
  Mechanics of Space Systems*, 4th ed., sec. 3.5). ``dcm_BN = dcm_from_q(q_BN)`` maps N components
  to B components: ``x_B = dcm_BN @ x_N``. The principal rotation of angle ``phi`` about the unit
  axis ``e`` is ``q = [cos(phi/2), e sin(phi/2)]``.
* Composition: ``q_mult(a, b, out)`` returns the Euler parameters of ``dcm(a) @ dcm(b)``. So
  ``q_CN = q_mult(q_CB, q_BN)`` — the same order as ``dcm_CN = dcm_CB @ dcm_BN`` (S&J sec. 3.5,
  successive rotations, with ``beta'' = q_CB`` as the left factor). In Hamilton-product terms
  this is ``b (x) a``.
* LVLH (H): z_H = -r/|r| (nadir), y_H = -h/|h| with h = r x v, x_H = y_H x z_H (along-track).

All functions are numba kernels (``thruster_hil.core.jit.kernel``): pure, on floats and float64
arrays, outputs preallocated by the caller, no exceptions (integer status codes), deterministic.
"""

import math

from thruster_hil.core.jit import kernel

# Status codes returned by kernels.
STATUS_OK = 0
STATUS_DEGENERATE = 1  # zero / non-finite input (e.g. zero-norm quaternion, r = 0)


@kernel
def dcm_entries(q0, q1, q2, q3):
    """The nine entries of the direction cosine matrix of ``(q0, q1, q2, q3)`` (S&J sec. 3.5),
    row-major, as floats: the one place the quaternion-to-DCM formula is written. Kernels that
    must not allocate (and :func:`dcm_from_q`, :func:`rotate_by_q`) take the matrix from here.

    Not normalised: the matrix of a non-unit q is scaled by |q|^2.
    """
    return (
        q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3,
        2.0 * (q1 * q2 + q0 * q3),
        2.0 * (q1 * q3 - q0 * q2),
        2.0 * (q1 * q2 - q0 * q3),
        q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3,
        2.0 * (q2 * q3 + q0 * q1),
        2.0 * (q1 * q3 + q0 * q2),
        2.0 * (q2 * q3 - q0 * q1),
        q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3,
    )


@kernel
def dcm_from_q(q, out):
    """Direction cosine matrix of the Euler parameters ``q`` (S&J sec. 3.5) into ``out`` (3, 3).

    ``q`` should be unit; it is not normalised here (the matrix of a non-unit q is scaled by |q|^2).
    """
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = dcm_entries(q[0], q[1], q[2], q[3])
    out[0, 0] = c00
    out[0, 1] = c01
    out[0, 2] = c02
    out[1, 0] = c10
    out[1, 1] = c11
    out[1, 2] = c12
    out[2, 0] = c20
    out[2, 1] = c21
    out[2, 2] = c22


@kernel
def q_from_dcm(dcm, out):
    """Euler parameters of the proper orthogonal ``dcm`` by Sheppard's method (S&J sec. 3.5).

    The largest of the four squared parameters is taken as the pivot, so no division by a small
    number occurs for any attitude. The result is normalised and has ``q0 >= 0`` (the short
    rotation, principal angle in [0, pi]). Returns STATUS_OK, or STATUS_DEGENERATE (``out`` set to
    the identity) if the matrix has non-finite entries.
    """
    tr = dcm[0, 0] + dcm[1, 1] + dcm[2, 2]
    s0 = 0.25 * (1.0 + tr)
    s1 = 0.25 * (1.0 + 2.0 * dcm[0, 0] - tr)
    s2 = 0.25 * (1.0 + 2.0 * dcm[1, 1] - tr)
    s3 = 0.25 * (1.0 + 2.0 * dcm[2, 2] - tr)
    if not (math.isfinite(s0) and math.isfinite(s1) and math.isfinite(s2) and math.isfinite(s3)):
        out[0] = 1.0
        out[1] = 0.0
        out[2] = 0.0
        out[3] = 0.0
        return STATUS_DEGENERATE
    # Off-diagonal combinations (S&J sec. 3.5).
    p01 = 0.25 * (dcm[1, 2] - dcm[2, 1])
    p02 = 0.25 * (dcm[2, 0] - dcm[0, 2])
    p03 = 0.25 * (dcm[0, 1] - dcm[1, 0])
    p23 = 0.25 * (dcm[1, 2] + dcm[2, 1])
    p31 = 0.25 * (dcm[2, 0] + dcm[0, 2])
    p12 = 0.25 * (dcm[0, 1] + dcm[1, 0])
    if s0 >= s1 and s0 >= s2 and s0 >= s3:
        a = math.sqrt(s0)
        b0, b1, b2, b3 = a, p01 / a, p02 / a, p03 / a
    elif s1 >= s2 and s1 >= s3:
        a = math.sqrt(s1)
        b0, b1, b2, b3 = p01 / a, a, p12 / a, p31 / a
    elif s2 >= s3:
        a = math.sqrt(s2)
        b0, b1, b2, b3 = p02 / a, p12 / a, a, p23 / a
    else:
        a = math.sqrt(s3)
        b0, b1, b2, b3 = p03 / a, p31 / a, p23 / a, a
    if b0 < 0.0:
        b0, b1, b2, b3 = -b0, -b1, -b2, -b3
    norm = math.sqrt(b0 * b0 + b1 * b1 + b2 * b2 + b3 * b3)
    out[0] = b0 / norm
    out[1] = b1 / norm
    out[2] = b2 / norm
    out[3] = b3 / norm
    return STATUS_OK


@kernel
def q_mult(a, b, out):
    """Compose Euler parameters: ``dcm(out) = dcm(a) @ dcm(b)``, i.e. ``q_CN = q_mult(q_CB, q_BN)``.

    S&J sec. 3.5 (successive rotations); equal to the Hamilton product ``b (x) a``. ``out`` may
    alias ``a`` or ``b``.
    """
    a0 = a[0]
    a1 = a[1]
    a2 = a[2]
    a3 = a[3]
    b0 = b[0]
    b1 = b[1]
    b2 = b[2]
    b3 = b[3]
    out[0] = a0 * b0 - a1 * b1 - a2 * b2 - a3 * b3
    out[1] = a1 * b0 + a0 * b1 + a3 * b2 - a2 * b3
    out[2] = a2 * b0 - a3 * b1 + a0 * b2 + a1 * b3
    out[3] = a3 * b0 + a2 * b1 - a1 * b2 + a0 * b3


@kernel
def q_conj(q, out):
    """Inverse rotation: ``dcm(out) = dcm(q).T`` (so ``q_NB = q_conj(q_BN)``). ``out`` may alias."""
    out[0] = q[0]
    out[1] = -q[1]
    out[2] = -q[2]
    out[3] = -q[3]


@kernel
def q_normalize(q):
    """Normalise ``q`` in place. Returns STATUS_OK, or STATUS_DEGENERATE if |q| is zero or not
    finite, in which case ``q`` is set to the identity [1, 0, 0, 0]."""
    n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]
    if not (n2 > 0.0) or not math.isfinite(n2):
        q[0] = 1.0
        q[1] = 0.0
        q[2] = 0.0
        q[3] = 0.0
        return STATUS_DEGENERATE
    inv = 1.0 / math.sqrt(n2)
    q[0] *= inv
    q[1] *= inv
    q[2] *= inv
    q[3] *= inv
    return STATUS_OK


@kernel
def q_from_axis_angle(axis, angle_rad, out):
    """Principal rotation ``angle_rad`` about ``axis`` (normalised here): [cos(a/2), e sin(a/2)].

    Returns STATUS_DEGENERATE (identity written) if the axis has zero length.
    """
    n = math.sqrt(axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2])
    if not (n > 0.0) or not math.isfinite(n):
        out[0] = 1.0
        out[1] = 0.0
        out[2] = 0.0
        out[3] = 0.0
        return STATUS_DEGENERATE
    s = math.sin(0.5 * angle_rad) / n
    out[0] = math.cos(0.5 * angle_rad)
    out[1] = axis[0] * s
    out[2] = axis[1] * s
    out[3] = axis[2] * s
    return STATUS_OK


@kernel
def q_error_angle(q_BR):
    """Principal rotation angle [rad] in [0, pi] of the attitude error ``q_BR`` (B relative to R).

    ``2 atan2(|q_vec|, |q0|)`` — accurate near 0 and near pi, and insensitive to the sign of q
    and to a small departure from unit norm.
    """
    v = math.sqrt(q_BR[1] * q_BR[1] + q_BR[2] * q_BR[2] + q_BR[3] * q_BR[3])
    return 2.0 * math.atan2(v, abs(q_BR[0]))


@kernel
def dcm_from_ypr(yaw, pitch, roll, out):
    """``dcm_BR`` of 3-2-1 Euler angles [rad] of B relative to R: ``M1(roll) M2(pitch) M3(yaw)``.

    S&J Appendix B (3-2-1 set). Yaw about z_R, then pitch about the new y, then roll about x_B.
    """
    c1 = math.cos(yaw)
    s1 = math.sin(yaw)
    c2 = math.cos(pitch)
    s2 = math.sin(pitch)
    c3 = math.cos(roll)
    s3 = math.sin(roll)
    out[0, 0] = c2 * c1
    out[0, 1] = c2 * s1
    out[0, 2] = -s2
    out[1, 0] = s3 * s2 * c1 - c3 * s1
    out[1, 1] = s3 * s2 * s1 + c3 * c1
    out[1, 2] = s3 * c2
    out[2, 0] = c3 * s2 * c1 + s3 * s1
    out[2, 1] = c3 * s2 * s1 - s3 * c1
    out[2, 2] = c3 * c2


@kernel
def rotate_by_q(q0, q1, q2, q3, vx, vy, vz):
    """``dcm(q) v / |q|^2`` as 3 floats, for q = (q0, q1, q2, q3) given as scalars.

    Exact for a slightly non-unit (RK4 stage) q. With q = q_BN it maps N components to B; with
    the conjugate (q0, -q1, -q2, -q3) it maps B components back to N.
    """
    n2 = q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = dcm_entries(q0, q1, q2, q3)
    return (
        (c00 * vx + c01 * vy + c02 * vz) / n2,
        (c10 * vx + c11 * vy + c12 * vz) / n2,
        (c20 * vx + c21 * vy + c22 * vz) / n2,
    )


@kernel
def lvlh_axes(rx, ry, rz, vx, vy, vz):
    """The LVLH axes in N as 9 floats (x_H, y_H, z_H): z_H = -r/|r| (nadir), y_H = -h/|h|
    (h = r x v), x_H = y_H x z_H (along-track). The rows of dcm_HN."""
    rn = math.sqrt(rx * rx + ry * ry + rz * rz)
    hx = ry * vz - rz * vy
    hy = rz * vx - rx * vz
    hz = rx * vy - ry * vx
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    zx = -rx / rn
    zy = -ry / rn
    zz = -rz / rn
    yx = -hx / hn
    yy = -hy / hn
    yz = -hz / hn
    return (yy * zz - yz * zy, yz * zx - yx * zz, yx * zy - yy * zx, yx, yy, yz, zx, zy, zz)


@kernel
def dcm_HN(r_BN_N, v_BN_N, out):
    """LVLH direction-cosine matrix: rows are the H axes in N components (x_H = dcm_HN @ x_N).

    z_H = -r/|r| (nadir), y_H = -h/|h| with h = r x v (negative orbit normal), x_H = y_H x z_H
    (along-track; equals v/|v| on a circular orbit). out: (3, 3) float64. For a degenerate state
    (r = 0 or r parallel to v) the result is not a rotation; callers keep states physical.
    """
    rx = r_BN_N[0]
    ry = r_BN_N[1]
    rz = r_BN_N[2]
    vx = v_BN_N[0]
    vy = v_BN_N[1]
    vz = v_BN_N[2]
    xx, xy, xz, yx, yy, yz, zx, zy, zz = lvlh_axes(rx, ry, rz, vx, vy, vz)
    out[0, 0] = xx
    out[0, 1] = xy
    out[0, 2] = xz
    out[1, 0] = yx
    out[1, 1] = yy
    out[1, 2] = yz
    out[2, 0] = zx
    out[2, 1] = zy
    out[2, 2] = zz
