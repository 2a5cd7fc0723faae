"""The API's calls: :func:`plan`, :func:`run`, :func:`replay` and :func:`montecarlo`.

Each is the command of the same name without the command line: the same planner
(:func:`thruster_hil.plan.plan_stack`), the same loop (:func:`thruster_hil.closedloop.runner.
run_burn`, cycle by cycle with the run records as ``thruster-hil run`` flies it, so the numbers
and telemetry.csv are the CLI's to the byte), the same replay and Monte-Carlo campaign. What
differs is the edge: keyword arguments checked here instead of argparse, typed results instead of
printed JSON, exceptions instead of exit statuses. A bad input raises
:class:`~thruster_hil.core.errors.UserError` with the CLI's one line; a burn that ends short of
its target is a result with a verdict (the CLI's exit status 1), not an exception.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from thruster_hil.api.results import (
    BurnResult,
    CaseOutcomes,
    MonteCarloResult,
    Plan,
    ReplayResult,
    RunRecordsError,
    SeriesRecorder,
)
from thruster_hil.core.errors import UserError

#: The planner's targets: the keyword, the thruster_hil.plan.Target kind, the CLI option.
TARGETS = {
    "delta_v_mps": ("delta_v", "--delta-v"),
    "raise_perigee_km": ("raise_perigee", "--raise-perigee-km"),
    "mean_altitude_km": ("mean_altitude", "--target-mean-altitude-km"),
    "burn_duration_s": ("burn_duration", "--burn-duration"),
}
#: The orbit and atmosphere keywords and their CLI options.
ORBIT = {
    "perigee_km": "--perigee-km",
    "apogee_km": "--apogee-km",
    "solar_activity": "--solar-activity",
    "f107_sfu": "--f107",
    "ap": "--ap",
}
UNITS = ("sim", "emulator", "qemu", "simavr")
MODES = ("lockstep", "realtime")
MAX_SEED = 2**63 - 1


# ---- argument checks: the one-line errors argparse gives the CLI ----------------------------


def _number(
    where: str, name: str, value, lo: float = 0.0, hi: float = math.inf, closed: bool = False
) -> float:
    """A finite real number above ``lo`` (or from it, ``closed``), at most ``hi``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else math.nan
    if not (math.isfinite(x) and (lo <= x if closed else lo < x) and x <= hi):
        low = f"{'>=' if closed else '>'} {lo:g}"
        span = low if hi == math.inf else f"in {lo:g}..{hi:g}"
        raise UserError(where, f"expected a finite number {span}, got {value!r}", field=name)
    return x


def _whole(where: str, name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise UserError(where, f"expected a whole number in {lo}..{hi}, got {value!r}", field=name)
    return int(value)


def _text(where: str, name: str, value) -> str:
    if not isinstance(value, str | Path) or not str(value):
        raise UserError(where, f"expected a non-empty string or path, got {value!r}", field=name)
    return str(value)


def _choice(where: str, name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(where, f"expected one of {', '.join(choices)}, got {value!r}", field=name)
    return value


# ---- plan -----------------------------------------------------------------------------------


def plan(
    stack: str | Path = "dragon-boost-kit",
    *,
    delta_v_mps: float | None = None,
    raise_perigee_km: float | None = None,
    mean_altitude_km: float | None = None,
    burn_duration_s: float | None = None,
    perigee_km: float | None = None,
    apogee_km: float | None = None,
    solar_activity: str | None = None,
    f107_sfu: float | None = None,
    ap: float | None = None,
) -> Plan:
    """Plan a reboost burn of ``stack`` (a name in hw_configs/stacks/ or a stack TOML path), as
    ``thruster-hil plan`` does: flown in closed loop with the ideal unit, so a :func:`run` with
    ``unit="sim"`` reproduces it.

    Exactly one target: ``delta_v_mps`` [m/s], ``raise_perigee_km`` [km],
    ``mean_altitude_km`` [km] or ``burn_duration_s`` [s]. ``perigee_km`` and ``apogee_km``
    (mean altitudes, both or neither) set the initial orbit (default: the station's);
    ``solar_activity`` (low, moderate, high), ``f107_sfu`` and ``ap`` the atmosphere.
    Raises UserError (ConfigError for a stack file) on a bad input or a target the thrusters
    cannot fly.
    """
    from thruster_hil.config import build_stack_model, load_stack
    from thruster_hil.plan import Target, plan_stack
    from thruster_hil.sims import atmosphere as atm

    where = "plan"
    given = {
        key: value
        for key, value in (
            ("delta_v_mps", delta_v_mps),
            ("raise_perigee_km", raise_perigee_km),
            ("mean_altitude_km", mean_altitude_km),
            ("burn_duration_s", burn_duration_s),
        )
        if value is not None
    }
    if len(given) != 1:
        raise UserError(
            where,
            f"expected exactly one target ({', '.join(TARGETS)}), got "
            + (", ".join(given) if given else "none"),
        )
    key, value = next(iter(given.items()))
    target = Target(TARGETS[key][0], _number(where, key, value))
    value = target.value
    if (perigee_km is None) != (apogee_km is None):
        raise UserError(where, "perigee_km and apogee_km go together: give both or neither")
    if perigee_km is not None:
        perigee_km = _number(where, "perigee_km", perigee_km)
        apogee_km = _number(where, "apogee_km", apogee_km)
    if solar_activity is not None:
        _choice(where, "solar_activity", solar_activity, tuple(atm.PRESETS))
    if f107_sfu is not None:
        f107_sfu = _number(
            where, "f107_sfu", f107_sfu, atm.F107_MIN_SFU, atm.F107_MAX_SFU, closed=True
        )
    if ap is not None:
        ap = _number(where, "ap", ap, atm.AP_MIN, atm.AP_MAX, closed=True)
    stack_ref = _text(where, "stack", stack)
    config = load_stack(stack_ref)
    model = build_stack_model(config)
    data = plan_stack(
        config,
        target,
        perigee_km=perigee_km,
        apogee_km=apogee_km,
        solar_activity=solar_activity,
        f107_sfu=f107_sfu,
        ap=ap,
        model=model,
    )
    request = {
        "stack": stack_ref,
        "perigee_km": perigee_km,
        "apogee_km": apogee_km,
        key: value,
        "solar_activity": solar_activity,
        "f107_sfu": f107_sfu,
        "ap": ap,
    }
    return Plan(
        stack=data["stack"],
        target=target,
        delta_v_mps=data["delta_v_mps"],
        burn_duration_s=data["burn_duration_s"],
        propellant_kg=data["propellant_kg"],
        tank_used_kg=dict(data["tank_used_kg"]),
        stack_mass_kg=data["stack_mass_kg"],
        perigee_km_before=data["perigee_km_before"],
        apogee_km_before=data["apogee_km_before"],
        perigee_km_after=data["perigee_km_after"],
        apogee_km_after=data["apogee_km_after"],
        mean_altitude_change_km=data["mean_altitude_change_km"],
        translation_thrusters=tuple(data["translation_thrusters"]),
        thrusters=tuple(model.thruster_names),
        data=data,
        request=request,
        stack_config=config,
        model=model,
    )


def _check_plan(where: str, p) -> Plan:
    if not isinstance(p, Plan):
        raise UserError(
            where,
            f"expected a Plan from thruster_hil.api.plan(), got {type(p).__name__}",
            field="plan",
        )
    return p


def target_args(p: Plan) -> list[str]:
    """The plan's orbit and target as ``thruster-hil`` options, in the CLI's order (so a
    Monte-Carlo rerun command plans the same burn)."""
    order = ("perigee_km", "apogee_km", *TARGETS, "solar_activity", "f107_sfu", "ap")
    flags = {**ORBIT, **{k: flag for k, (_kind, flag) in TARGETS.items()}}
    out: list[str] = []
    for key in order:
        value = p.request.get(key)
        if value is not None:
            out += [flags[key], repr(value) if isinstance(value, float) else str(value)]
    return out


# ---- run ------------------------------------------------------------------------------------


def run(
    plan: Plan,
    *,
    unit: str | None = None,
    port: str | None = None,
    mode: str = "lockstep",
    faults: str | None = None,
    fail_thrusters: Mapping[str, float] | None = None,
    out: str | Path | None = None,
    dispersions: str | Path | None = None,
    case_seed: int | None = None,
    case: int | None = None,
    seed: int | None = None,
    stream: str | None = None,
) -> BurnResult:
    """Fly ``plan`` in closed loop, as ``thruster-hil run`` does, and return its result.

    The unit: ``unit="sim"`` (default: the in-process ideal unit), ``"emulator"`` (started on a
    pseudo-terminal), ``"qemu"`` (the board firmware under qemu-system-avr), ``"simavr"`` (the
    board firmware cycle by cycle under simavr), or ``port=URL``
    for a unit on a serial port (a device path, a pty, any pyserial URL). ``mode`` lockstep or
    realtime (serial units); ``faults`` an emulator fault spec (``thruster-hil emulate --help``);
    ``fail_thrusters`` {name: seconds into the burn} fails thrusters off. ``out`` writes the run
    directory as the CLI does (replay and report read it); without it nothing is written.
    ``dispersions`` with ``case_seed`` (or ``case`` and ``seed``) flies one Monte-Carlo case
    (sim only). ``stream="udp://HOST:PORT"`` sends every cycle as a HOST_CYCLE packet, as
    ``run --stream`` does (its counts in the summary's ``stream``).

    Returns a :class:`BurnResult` whatever the verdict; raises UserError on a bad input or a
    unit that does not come up, :class:`RunRecordsError` when the run directory could not be
    written whole (the result is attached).
    """
    from thruster_hil.closedloop.runner import Failure, run_burn

    where = "run"
    p = _check_plan(where, plan)
    model, data = p.model, p.data
    unit_name = _check_unit(where, unit, port, mode, faults)
    names = list(model.thruster_names)
    failures = []
    if fail_thrusters is not None and not isinstance(fail_thrusters, Mapping):
        raise UserError(
            where, f"expected {{name: seconds}}, got {fail_thrusters!r}", field="fail_thrusters"
        )
    for name, at_s in (fail_thrusters or {}).items():
        if name not in names:
            raise UserError(
                where,
                f"expected a thruster of stack {p.stack} ({', '.join(names)}), got {name!r}",
                field="fail_thrusters",
            )
        failures.append(Failure(name, _number(where, "fail_thrusters", at_s, closed=True)))
    plant_case, case_info = _case(where, p, unit_name, dispersions, case_seed, case, seed)
    target = None
    if stream is not None:  # resolved once, before anything is written or started
        from thruster_hil.stream import CycleStream, resolve_option, serial_link_counters

        target = resolve_option(_text(where, "stream", stream), where)
    period_ms = int(round(model.control_period_s * 1000))
    planned = max(1, math.ceil(data["burn_duration_s"] / model.control_period_s))
    series = SeriesRecorder(model.thruster_names, model.tank_names, model.mass_kg, planned + 64)
    recorder = None
    if out is not None:
        from thruster_hil.records import RunRecorder, record_not_flown

        recorder = RunRecorder(_text(where, "out", out), names, model.mass_kg, model.tank_names)
    serial = sender = None
    try:
        if target is not None:
            sender = CycleStream(target, len(names), len(model.tank_names), model.mass_kg)
        if unit_name != "sim":
            serial = _open_unit(p, unit_name, port, mode, faults, recorder)
            if sender is not None:
                sender.set_link_counters(serial_link_counters(serial))
        link_info = getattr(getattr(serial, "link", None), "info", None)
        label = serial.name if serial is not None else "sim"
        if recorder is not None:
            recorder.start(
                {
                    "title": f"{data['stack']} via {label} ({mode})",
                    "stack": data["stack"],
                    "unit": label,
                    "mode": mode,
                    "serial": serial is not None,
                    "thrusters": names,
                    "period_ms": period_ms,
                    "planned_cycles": planned,
                    "target_delta_v_mps": data["delta_v_mps"],
                    "attitude_limit_deg": math.degrees(model.max_attitude_error_rad),
                    "plan": data,
                }
            )
        with contextlib.ExitStack() as views:
            sinks = [series.on_cycle] + ([sender.on_cycle] if sender is not None else [])
            if recorder is not None:
                sinks.insert(0, recorder.on_cycle)  # first: the series keeps what the file has
                if serial is not None:
                    from thruster_hil.records import StatusWriter

                    views.enter_context(
                        StatusWriter(recorder.dir, serial.stats, on_error=recorder.fail)
                    )
            result = run_burn(
                model,
                data,
                unit=serial,
                failures=failures,
                on_cycle=_tee(sinks),
                case=plant_case,
            )
            serial = None  # closed by the runner (STOP_ALL)
    except BaseException as exc:
        if serial is not None:
            serial.close()
        if sender is not None:
            sender.close()
        if recorder is not None:
            record_not_flown(
                recorder,
                exc,
                p.data,
                port or unit_name,
                p.stack_config.path,
                getattr(serial, "valves_closed", None),
            )
        raise
    summary = dict(result.summary)
    summary.update(case_info)
    if sender is not None:
        sender.close()
        summary["stream"] = sender.stats()
    if recorder is not None:
        summary["run_dir"] = str(recorder.dir)
    summary["plan"] = data
    summary["stack_path"] = str(p.stack_config.path)
    res = BurnResult.of(
        summary, result.events, series.series(), None if recorder is None else recorder.dir
    )
    if recorder is not None:
        _finish(recorder, summary, p, link_info, res)
    return res


def _tee(sinks: list[Callable[[int, dict], None]]) -> Callable[[int, dict], None]:
    if len(sinks) == 1:
        return sinks[0]
    if len(sinks) == 3:  # the records, the series and a stream
        one, two, three = sinks

        def each(k: int, info: dict) -> None:
            one(k, info)
            two(k, info)
            three(k, info)

        return each
    first, second = sinks

    def on_cycle(k: int, info: dict) -> None:
        first(k, info)
        second(k, info)

    return on_cycle


def _check_unit(where: str, unit, port, mode, faults) -> str:
    """The unit to fly with ("sim", "emulator", "qemu", or "port"), checked as the CLI checks
    its unit options."""
    _choice(where, "mode", mode, MODES)
    if port is not None:
        if unit is not None:
            raise UserError(where, "give unit or port, not both: a port is the unit", field="port")
        _text(where, "port", port)
        name = "port"
    else:
        name = _choice(where, "unit", "sim" if unit is None else unit, UNITS)
    if name == "sim":
        if faults is not None or mode != "lockstep":
            raise UserError(
                where,
                "faults and mode need a serial unit (unit='emulator', 'qemu' or a port), "
                "not the sim unit",
            )
        return name
    if faults is not None:
        if name != "emulator":
            raise UserError(
                where,
                "faults applies to the emulator the run starts, not to a unit on a port, "
                "QEMU or simavr (start 'thruster-hil emulate --faults ...' instead)",
                field="faults",
            )
        from thruster_hil.firmware_bridge.faults import parse_faults

        parse_faults(_text(where, "faults", faults))
    return name


def _open_unit(p: Plan, unit_name: str, port, mode: str, faults, recorder):
    """A connected, armed serial unit (what the CLI's run opens for --unit / --port)."""
    from thruster_hil.closedloop.fused import warm_up
    from thruster_hil.closedloop.hil import LinkError, open_unit

    warm_up(p.model, p.data)  # compile the cycle now: an armed unit must not wait for it
    try:
        return open_unit(
            unit=unit_name,
            port=port,
            mode=mode,
            n_thrusters=len(p.model.thruster_names),
            period_ms=int(round(p.model.control_period_s * 1000)),
            faults=faults,
            on_bytes=None if recorder is None else recorder.on_bytes,
        )
    except LinkError as exc:
        raise UserError(port or unit_name, f"the unit did not come up: {exc}") from None


def _case(where: str, p: Plan, unit_name: str, dispersions, case_seed, case, seed):
    """The dispersed case a run flies (None: the nominal stack) and what to record of it."""
    given = [
        k for k, v in (("case_seed", case_seed), ("case", case), ("seed", seed)) if v is not None
    ]
    if dispersions is None:
        if given:
            raise UserError(
                where, "selects a Monte-Carlo case: it needs dispersions=NAME|FILE", field=given[0]
            )
        return None, {}
    if unit_name != "sim":
        raise UserError(
            where, "flies a Monte-Carlo case in the software loop: use unit='sim'", field="unit"
        )
    if (case_seed is None) == (case is None):
        raise UserError(where, "needs exactly one of case_seed or case", field="dispersions")
    if case_seed is not None and seed is not None:
        raise UserError(where, "goes with case, not with case_seed", field="seed")
    from thruster_hil import dispersions as disp

    spec = disp.load_dispersions(_text(where, "dispersions", dispersions))
    if case_seed is not None:
        seed_k = _whole(where, "case_seed", case_seed, 0, MAX_SEED)
        info = {"case_seed": seed_k}
    else:
        index = _whole(where, "case", case, 0, 10**8)
        campaign_seed = spec.seed if seed is None else _whole(where, "seed", seed, 0, MAX_SEED)
        seed_k = disp.case_seed(campaign_seed, index)
        info = {"case": index, "campaign_seed": campaign_seed, "case_seed": seed_k}
    info["dispersions"] = spec.where
    return disp.sample_case(spec, p.model, seed_k), info


def _finish(recorder, summary: dict, p: Plan, link_info, res: BurnResult) -> None:
    """summary.json with the config hashes and versions; RunRecordsError if any record of the
    run could not be written."""
    from thruster_hil.records import RecordError, run_meta

    meta = run_meta(p.stack_config, summary["unit"], link_info)
    summary_error = None
    try:
        recorder.finish(summary, meta)
    except RecordError as err:
        summary_error = err
    first = recorder.error or summary_error
    if first is not None:
        tail = "summary.json written" if summary_error is None else "summary.json not written"
        raise RunRecordsError(first.path, f"{first.message}; {tail}", res)


# ---- replay ---------------------------------------------------------------------------------


def replay(run_dir: str | Path) -> ReplayResult:
    """Replay a run directory written through a serial unit (``thruster-hil replay``): decode
    its capture, fly the same burn with the recorded VALVE_REPORTs in place of the unit, write
    telemetry.replay.csv and say whether it equals telemetry.csv. Raises UserError for a
    directory that is not a whole run with a capture."""
    from thruster_hil.replay import replay_run

    kept: list[SeriesRecorder] = []

    def watch(model) -> Callable[[int, dict], None]:
        rec = SeriesRecorder(model.thruster_names, model.tank_names, model.mass_kg, 1024)
        kept.append(rec)
        return rec.on_cycle

    r = replay_run(_text("replay", "run_dir", run_dir), watch=watch)
    return ReplayResult(
        run_dir=Path(r["run_dir"]),
        identical=r["identical"],
        cycles=r["cycles"],
        frames_decoded=r["frames_decoded"],
        decode_errors=r["decode_errors"],
        command_mismatches=r["command_mismatches"],
        recorded=Path(r["recorded"]),
        replayed=Path(r["replayed"]),
        series=kept[0].series(),
    )


# ---- Monte-Carlo ----------------------------------------------------------------------------


def montecarlo(
    plan: Plan,
    cases: int,
    *,
    dispersions: str | Path = "default",
    seed: int | None = None,
    threads: int | None = None,
    scheduler: str | None = None,
    chunk: int | None = None,
    out: str | Path | None = None,
) -> MonteCarloResult:
    """Fly ``cases`` dispersed cases of ``plan`` (``thruster-hil montecarlo``): the true stack
    and sensors drawn from the ``dispersions`` spec (a name in hw_configs/dispersions/ or a TOML
    path) with ``seed`` (default: the spec's), the controller on the nominal model. On this
    machine's cores (``threads``: numba threads, set process-wide) or a Dask cluster
    (``scheduler="tcp://HOST:PORT"``). ``out`` writes cases.csv, summary.json and report.png.
    Failing cases are counted in the result, not raised."""
    from thruster_hil import montecarlo as mc
    from thruster_hil.dispersions import case_seed, load_dispersions

    where = "montecarlo"
    p = _check_plan(where, plan)
    n = _whole(where, "cases", cases, 1, 10**8)
    if seed is not None:
        seed = _whole(where, "seed", seed, 0, MAX_SEED)
    if chunk is not None:
        chunk = _whole(where, "chunk", chunk, 1, 10**8)
    spec = load_dispersions(_text(where, "dispersions", dispersions))
    if scheduler is not None:
        if threads is not None:
            raise UserError(
                where,
                "sets this machine's numba threads; with a scheduler each Dask worker uses "
                "its own threads",
                field="threads",
            )
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UserError(where, f"needs Dask: {mc.DASK_HINT}", field="scheduler") from None
    elif threads is not None:
        import numba

        threads = _whole(where, "threads", threads, 1, numba.config.NUMBA_NUM_THREADS)
    campaign = mc.Campaign.build(p.model, p.data, spec, seed, n, p.request["stack"])
    out_dir = None if out is None else mc.prepare_out_dir(_text(where, "out", out))
    if scheduler is not None:
        result = mc.run_dask(
            campaign, scheduler=_text(where, "scheduler", scheduler), chunk=chunk or 0
        )
    else:
        result = mc.run_local(campaign, chunk=chunk or 0, threads=threads)
    outcomes = mc.evaluate(campaign, result.rows)
    summary = mc.summarise(campaign, result, outcomes, target_args(p))
    if out_dir is not None:
        summary["out_dir"] = str(out_dir)
        mc.write_outputs(out_dir, campaign, outcomes, summary)
    table = {
        k: np.array([o[k] for o in outcomes]) for k in mc.OUTCOME_FIELDS if k != "fail_reasons"
    }
    return MonteCarloResult(
        stack=summary["stack"],
        cases=summary["cases"],
        seed=summary["seed"],
        passed=summary["passed"],
        failed=summary["failed"],
        pass_rate=summary["pass_rate"],
        thruster_failures_injected=summary["thruster_failures_injected"],
        stats=summary["stats"],
        failures=summary["failures"],
        outcomes=CaseOutcomes(
            case_seed=np.array([case_seed(campaign.seed, i) for i in range(n)], np.int64),
            fail_reasons=tuple(o["fail_reasons"] for o in outcomes),
            **table,
        ),
        out_dir=out_dir,
        summary=summary,
    )
