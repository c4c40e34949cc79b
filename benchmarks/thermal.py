"""Thermal throttling signals from the operating system, and the run's throttling verdict.

Probes (one interface, :class:`ThermalProbe`):

* ``pmset`` (macOS): ``pmset -g therm`` — CPU speed limit and recorded warning levels;
* ``powermetrics`` (macOS): the thermal pressure level of a running :class:`PowermetricsMeter`;
* ``linux-sysfs`` (Linux, Raspberry Pi included): thermal zones, CPU cooling devices,
  cpufreq, Intel's thermal_throttle counters and the Pi firmware's throttled flags;
* ``nvml`` (NVIDIA): temperature, SM clock, power and the clocks-event (throttle) reasons.

:func:`verdict` declares throttling only from what was measured: an OS signal, or, where
the OS gives none, a sustained fall in throughput — and it says which.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

from .energy import PowermetricsMeter, open_nvml_device

SYS_ROOT = "/sys"

# NVML clocks event (formerly "throttle") reasons, nvmlClocksEventReason* in nvml.h.
NVML_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
NVML_THROTTLING = 0x8 | 0x20 | 0x40 | 0x80  # the hardware and thermal slowdowns

# Raspberry Pi firmware `vcgencmd get_throttled` bits.
PI_FLAGS = {
    0: "under_voltage",
    1: "arm_frequency_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "arm_frequency_capping_occurred",
    18: "throttling_occurred",
    19: "soft_temp_limit_occurred",
}
PI_THROTTLING_NOW = 0b1110  # capped, throttled, soft temperature limit

PRESSURE_LEVELS = ("Nominal", "Moderate", "Heavy", "Trapping", "Sleeping")


class ThermalProbe(ABC):
    """One OS source of thermal readings."""

    name: str

    @abstractmethod
    def sample(self) -> dict[str, Any]:
        """Current readings, JSON-able."""

    @abstractmethod
    def throttled(self, sample: dict[str, Any]) -> tuple[bool | None, str]:
        """Whether ``sample`` shows throttling (None: it cannot tell), and a short reason."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def signal(self) -> dict[str, Any]:
        """A sample annotated for :func:`verdict`: ``{"probe", "throttled", "reason", "sample"}``."""
        sample = self.sample()
        throttled, reason = self.throttled(sample)
        return {"probe": self.name, "throttled": throttled, "reason": reason, "sample": sample}


def _run(command: Sequence[str]) -> str | None:
    """stdout and stderr of ``command``, or None if it cannot run or fails."""
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# ---------------------------------------------------------------- macOS: pmset

_PMSET_LEVEL = re.compile(r"(Thermal|Performance) Warning Level\s*(?:=|:|set to)\s*(\d+)", re.I)
_PMSET_NONE = re.compile(r"No (thermal|performance) warning level has been recorded", re.I)
_PMSET_CPU = re.compile(r"\b(CPU_\w+)\s*=\s*(-?\d+)")


def _pmset_verdict(d: dict[str, Any]) -> tuple[bool | None, str]:
    why = []
    if d["cpu_speed_limit"] is not None and d["cpu_speed_limit"] < 100:
        why.append(f"CPU_Speed_Limit {d['cpu_speed_limit']}")
    if d["cpu_scheduler_limit"] is not None and d["cpu_scheduler_limit"] < 100:
        why.append(f"CPU_Scheduler_Limit {d['cpu_scheduler_limit']}")
    for kind in ("thermal", "performance"):
        level = d[f"{kind}_warning_level"]
        if level not in (None, "none recorded", "0"):
            why.append(f"{kind} warning level {level}")
    if why:
        return True, ", ".join(why)
    if all(d[k] is None for k in ("cpu_speed_limit", "thermal_warning_level", "performance_warning_level")):
        return None, "pmset reported nothing recognisable"
    limit = d["cpu_speed_limit"]
    return False, ("CPU_Speed_Limit 100, no warning recorded" if limit is not None
                   else "no thermal or performance warning recorded")


def parse_pmset_therm(text: str) -> dict[str, Any]:
    """``pmset -g therm``: ``cpu_speed_limit``, ``cpu_scheduler_limit``, ``cpu_available_cpus``
    (ints, None when not printed), ``thermal_warning_level`` / ``performance_warning_level``
    (``"none recorded"``, the level as printed, or None), and ``throttled``: True if a CPU
    limit is below 100 or a non-zero warning level is recorded (level 0 is normal).
    """
    d: dict[str, Any] = dict.fromkeys(
        ("cpu_speed_limit", "cpu_scheduler_limit", "cpu_available_cpus",
         "thermal_warning_level", "performance_warning_level"))
    for line in text.splitlines():
        if m := _PMSET_NONE.search(line):
            d[f"{m.group(1).lower()}_warning_level"] = "none recorded"
        elif m := _PMSET_LEVEL.search(line):
            d[f"{m.group(1).lower()}_warning_level"] = m.group(2)
        elif m := _PMSET_CPU.search(line):
            key = m.group(1).lower()
            if key in d:
                d[key] = int(m.group(2))
    d["throttled"] = _pmset_verdict(d)[0]
    return d


class PmsetProbe(ThermalProbe):
    """``pmset -g therm``: the speed limit macOS imposes on the CPU (Intel Macs) and warning levels."""

    name = "pmset"

    def __init__(self, command: Sequence[str] = ("pmset", "-g", "therm")) -> None:
        self.command = list(command)

    def sample(self) -> dict[str, Any]:
        text = _run(self.command)
        if text is None:
            return {"error": f"`{' '.join(self.command)}` failed"}
        return parse_pmset_therm(text)

    def throttled(self, sample: dict[str, Any]) -> tuple[bool | None, str]:
        if "error" in sample:
            return None, sample["error"]
        return _pmset_verdict(sample)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "command": self.command}


class PowermetricsPressureProbe(ThermalProbe):
    """The thermal pressure level reported by a running :class:`PowermetricsMeter`.

    Each sample reports the worst level among the powermetrics samples that arrived since
    the previous one; anything above ``Nominal`` counts as throttling.
    """

    name = "powermetrics"

    def __init__(self, meter: PowermetricsMeter) -> None:
        self.meter = meter
        self._seen = 0

    def sample(self) -> dict[str, Any]:
        samples = list(self.meter.samples)
        new, self._seen = samples[self._seen:], len(samples)
        levels = [s["thermal_pressure"] for s in new if s["thermal_pressure"]]
        worst = max(levels, key=lambda p: PRESSURE_LEVELS.index(p) if p in PRESSURE_LEVELS else 0,
                    default=None)
        return {"thermal_pressure": worst, "samples": len(new)}

    def throttled(self, sample: dict[str, Any]) -> tuple[bool | None, str]:
        level = sample["thermal_pressure"]
        if level is None:
            return None, "no powermetrics thermal pressure since the last sample"
        return level != "Nominal", f"thermal pressure {level}"


# ---------------------------------------------------------------- Linux sysfs


def parse_vcgencmd_throttled(text: str) -> dict[str, Any]:
    """``vcgencmd get_throttled`` output (``throttled=0x50005``): the bitmask, its flag names,
    and ``throttled_now`` (frequency capped, throttled or soft temperature limit active now).
    """
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    if not m:
        raise ValueError(f"not `vcgencmd get_throttled` output: {text.strip()!r}")
    mask = int(m.group(1), 0)
    return {"mask": mask, "flags": [name for bit, name in PI_FLAGS.items() if mask >> bit & 1],
            "throttled_now": bool(mask & PI_THROTTLING_NOW)}


def vcgencmd_get_throttled(command: Sequence[str] = ("vcgencmd", "get_throttled")) -> str | None:
    """The Raspberry Pi firmware's throttled flags as text, or None where unavailable."""
    return _run(command) if shutil.which(command[0]) else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # e.g. a sensor that is down answers EINVAL/ENODATA
        return None


def _read_type(path: Path) -> str:
    try:
        return (path / "type").read_text().strip()
    except OSError:
        return path.name


def _is_cpu_cooling(kind: str) -> bool:
    return kind == "Processor" or "cpufreq" in kind


def read_linux_thermal(root: str = SYS_ROOT, *,
                       vcgencmd: Callable[[], str | None] = vcgencmd_get_throttled) -> dict[str, Any]:
    """Thermal readings from sysfs under ``root`` (flat keys; None where absent).

    ``temp_max_c`` / ``temp_max_zone`` and ``temp_c.<zone type>`` (``temp`` files are in
    millidegrees); ``cooling.<type>`` = ``"cur/max"`` for each cooling device, with
    ``cpu_cooling_devices`` / ``cpu_cooling_active`` counting those that slow the CPU
    (types ``Processor`` and ``cpufreq-*``); ``cpu_freq_mean_mhz`` / ``cpu_freq_min_mhz``
    (``scaling_cur_freq`` is in kHz); ``core_throttle_count`` (sum over CPUs) and
    ``package_throttle_count`` (sum over packages, each counted once); and on a Raspberry
    Pi ``pi_throttled`` (``vcgencmd get_throttled`` mask), ``pi_flags``, ``pi_throttled_now``.
    """
    base = Path(root)
    out: dict[str, Any] = {"temp_max_c": None, "temp_max_zone": None}
    thermal = base / "class" / "thermal"
    zones = sorted(thermal.glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0))
    for zone in zones:
        temp = _read_int(zone / "temp")
        if temp is None:
            continue
        kind = _read_type(zone)
        key = f"temp_c.{kind}" if f"temp_c.{kind}" not in out else f"temp_c.{kind}#{zone.name[12:]}"
        out[key] = temp / 1000
        if out["temp_max_c"] is None or temp / 1000 > out["temp_max_c"]:
            out["temp_max_c"], out["temp_max_zone"] = temp / 1000, kind

    cpu_cooling, active = 0, 0
    for dev in sorted(thermal.glob("cooling_device*"), key=lambda p: int(p.name[14:] or 0)):
        cur, top = _read_int(dev / "cur_state"), _read_int(dev / "max_state")
        kind = _read_type(dev)
        key = f"cooling.{kind}" if f"cooling.{kind}" not in out else f"cooling.{kind}#{dev.name[14:]}"
        out[key] = f"{cur}/{top}"
        if _is_cpu_cooling(kind):
            cpu_cooling += 1
            active += bool(cur and cur > 0)
    out["cpu_cooling_devices"], out["cpu_cooling_active"] = cpu_cooling, active

    cpus = sorted((base / "devices" / "system" / "cpu").glob("cpu[0-9]*"), key=lambda p: int(p.name[3:]))
    freqs = [f for f in (_read_int(c / "cpufreq" / "scaling_cur_freq") for c in cpus) if f is not None]
    out["cpu_freq_mean_mhz"] = statistics.fmean(freqs) / 1000 if freqs else None
    out["cpu_freq_min_mhz"] = min(freqs) / 1000 if freqs else None

    core, package = [], {}
    for c in cpus:
        if (n := _read_int(c / "thermal_throttle" / "core_throttle_count")) is not None:
            core.append(n)
        if (n := _read_int(c / "thermal_throttle" / "package_throttle_count")) is not None:
            package[_read_int(c / "topology" / "physical_package_id")] = n  # every CPU repeats its package's
    out["core_throttle_count"] = sum(core) if core else None
    out["package_throttle_count"] = sum(package.values()) if package else None

    try:
        pi = parse_vcgencmd_throttled(text) if (text := vcgencmd()) else None
    except ValueError:  # e.g. "VCHI initialization failed" without access to /dev/vchiq
        pi = None
    out["pi_throttled"] = hex(pi["mask"]) if pi else None
    out["pi_flags"] = pi["flags"] if pi else None
    out["pi_throttled_now"] = pi["throttled_now"] if pi else None
    return out


def linux_thermal_available(root: str = SYS_ROOT) -> bool:
    """Whether sysfs has any thermal, cpufreq or thermal_throttle files under ``root``."""
    base = Path(root)
    return (any((base / "class" / "thermal").glob("*"))
            or any((base / "devices" / "system" / "cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
            or any((base / "devices" / "system" / "cpu").glob("cpu[0-9]*/thermal_throttle")))


class LinuxSysfsProbe(ThermalProbe):
    """Linux sysfs thermal state; throttle counters are compared with the first sample."""

    name = "linux-sysfs"

    def __init__(self, root: str = SYS_ROOT, *,
                 vcgencmd: Callable[[], str | None] = vcgencmd_get_throttled) -> None:
        self.root = root
        self._vcgencmd = vcgencmd
        self._first: dict[str, Any] | None = None

    def sample(self) -> dict[str, Any]:
        s = read_linux_thermal(self.root, vcgencmd=self._vcgencmd)
        if self._first is None:
            self._first = s
        return s

    def throttled(self, sample: dict[str, Any]) -> tuple[bool | None, str]:
        first = self._first if self._first is not None else sample
        why, sources = [], []
        for key in ("core_throttle_count", "package_throttle_count"):
            if sample[key] is not None and first[key] is not None:
                sources.append("throttle counters")
                if sample[key] > first[key]:
                    why.append(f"{key} rose by {sample[key] - first[key]}")
        if sample["cpu_cooling_devices"]:
            sources.append("CPU cooling devices")
            if sample["cpu_cooling_active"]:
                why.append(f"{sample['cpu_cooling_active']} of {sample['cpu_cooling_devices']} "
                           "CPU cooling devices active")
        if sample["pi_throttled"] is not None:
            sources.append("Pi firmware flags")
            if sample["pi_throttled_now"]:
                why.append(f"Pi firmware {sample['pi_throttled']} "
                           f"({', '.join(f for f in sample['pi_flags'] if not f.endswith('occurred'))})")
        if why:
            return True, "; ".join(why)
        if not sources:
            return None, "no throttle counters, CPU cooling devices or Pi firmware flags; temperature alone cannot tell"
        return False, f"no throttling in {', '.join(dict.fromkeys(sources))}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": self.root}


# ---------------------------------------------------------------- NVIDIA


def nvml_throttle_reasons(mask: int) -> list[str]:
    """Names of the bits set in an NVML clocks-event (throttle) reasons mask."""
    names = [name for bit, name in NVML_REASONS.items() if mask & bit]
    unknown = mask & ~sum(NVML_REASONS)
    return names + ([f"unknown_{unknown:#x}"] if unknown else [])


class NvmlProbe(ThermalProbe):
    """GPU temperature, SM clock, power and clocks-event reasons through NVML."""

    name = "nvml"

    def __init__(self, gpu_index: int = 0, *, nvml: Any = None) -> None:
        self.gpu_index = gpu_index
        self._nvml, self._handle, self.gpu_name = open_nvml_device(gpu_index, nvml)
        self._reasons = getattr(self._nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) \
            or self._nvml.nvmlDeviceGetCurrentClocksThrottleReasons

    def _get(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(self._handle, *args)
        except self._nvml.NVMLError:  # e.g. NOT_SUPPORTED for power on some boards
            return None

    def sample(self) -> dict[str, Any]:
        nv = self._nvml
        power_mw = self._get(nv.nvmlDeviceGetPowerUsage)
        mask = self._get(self._reasons)
        return {
            "temperature_c": self._get(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": self._get(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            "max_sm_clock_mhz": self._get(nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_SM),
            "power_w": power_mw / 1000 if power_mw is not None else None,
            "clocks_event_reasons": mask,
            "clocks_event_reason_names": nvml_throttle_reasons(mask) if mask is not None else None,
        }

    def throttled(self, sample: dict[str, Any]) -> tuple[bool | None, str]:
        mask = sample["clocks_event_reasons"]
        if mask is None:
            return None, "NVML gave no clocks-event reasons"
        if mask & NVML_THROTTLING:
            return True, ", ".join(nvml_throttle_reasons(mask & NVML_THROTTLING))
        return False, "no thermal or hardware slowdown: " + (", ".join(nvml_throttle_reasons(mask)) or "none")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpu_index": self.gpu_index, "gpu_name": self.gpu_name}


# ---------------------------------------------------------------- choosing and judging


def _platform() -> str:
    return sys.platform


def pick_probes(device: str = "cpu", *, powermetrics_meter: PowermetricsMeter | None = None,
                gpu_index: int = 0) -> tuple[list[ThermalProbe], list[str]]:
    """The thermal probes usable here, and sentences saying what is missing."""
    probes: list[ThermalProbe] = []
    notes: list[str] = []
    system = _platform()
    if system == "darwin":
        if shutil.which("pmset"):
            probes.append(PmsetProbe())
        else:
            notes.append("pmset not found: no CPU speed limit from macOS")
        if powermetrics_meter is not None:
            probes.append(PowermetricsPressureProbe(powermetrics_meter))
        else:
            notes.append("no thermal pressure level: it comes from powermetrics, which is not running "
                         "(it needs sudo without a password)")
    elif system.startswith("linux"):
        if linux_thermal_available(SYS_ROOT):
            probes.append(LinuxSysfsProbe(SYS_ROOT))
        else:
            notes.append(f"no thermal zones, cpufreq or thermal_throttle files under {SYS_ROOT}: "
                         "the OS gives no CPU thermal signal here")
    else:
        notes.append(f"no thermal probe for {system}")
    if device == "cuda":
        try:
            probes.append(NvmlProbe(gpu_index))
        except RuntimeError as e:
            notes.append(f"no GPU thermal signal: {e}")
    return probes, notes


def _change(pct: float) -> str:
    return f"fell {pct:.1f}%" if pct >= 0 else f"rose {-pct:.1f}%"


def verdict(window_tps: list[float], signals: list[dict[str, Any]] | None = None, *,
            drop_threshold: float = 0.10) -> dict[str, Any]:
    """Whether the run was thermally throttled, and on what basis.

    ``window_tps``: generation tokens/s per window, in order. ``signals``: the probes'
    samples, annotated as by :meth:`ThermalProbe.signal` (``probe``, ``throttled``,
    ``reason``). Any OS signal of throttling decides True; OS signals that all say no
    decide False. Without any OS signal, throttling is declared only if each of the last
    two windows (after the first) is ``drop_threshold`` or more below the first; otherwise
    nothing can be declared (None).
    """
    if len(window_tps) < 2:
        raise ValueError(f"a throttling verdict needs at least 2 windows, got {len(window_tps)}")
    first, last = window_tps[0], window_tps[-1]
    if first <= 0:
        raise ValueError(f"the first window has no throughput ({first} tokens/s)")
    out: dict[str, Any] = {"first_tps": first, "last_tps": last,
                           "drop_pct": round(100 * (first - last) / first, 2)}
    if len(window_tps) >= 4:
        head, tail = statistics.fmean(window_tps[:2]), statistics.fmean(window_tps[-2:])
        out["drop_pct_tail"] = round(100 * (head - tail) / head, 2)
    drop = out.get("drop_pct_tail", out["drop_pct"])

    known = [s for s in signals or [] if s.get("throttled") is not None]
    hot = [s for s in known if s["throttled"]]
    if hot:
        named = dict.fromkeys(f"{s['probe']}: {s['reason']}" for s in hot)
        return {**out, "os_signal": "throttled", "throttled": True, "basis": "; ".join(named)}
    if known:
        probes = ", ".join(dict.fromkeys(s["probe"] for s in known))
        basis = f"no throttling reported by {probes}"
        if drop >= 100 * drop_threshold:
            basis += f"; throughput fell {drop:.1f}% with no OS thermal signal"
        return {**out, "os_signal": "not throttled", "throttled": False, "basis": basis}

    later = window_tps[1:][-2:]
    falls = [100 * (first - w) / first for w in later]
    if all(f >= 100 * drop_threshold for f in falls):
        shown = " and ".join(f"{f:.1f}%" for f in falls)
        return {**out, "os_signal": "unavailable", "throttled": True,
                "basis": f"from throughput alone: the last windows are {shown} below the first; "
                         "no OS thermal signal"}
    return {**out, "os_signal": "unavailable", "throttled": None,
            "basis": f"no OS thermal signal; throughput {_change(drop)}"}
