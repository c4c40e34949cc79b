"""Energy meters for the generation benchmark: what a run cost in joules, and how it was known.

Four sources, one interface (:class:`Meter`):

* ``powermetrics`` (macOS): CPU, GPU and ANE power sampled by ``sudo powermetrics``;
* ``nvml`` (NVIDIA): the GPU's cumulative energy counter;
* ``rapl`` (Linux x86): the CPU package (and DRAM) energy counters under ``/sys/class/powercap``;
* ``estimate``: a power stated by the user times the elapsed time — labelled as not measured.

Every timestamp is a ``time.perf_counter()`` value: :meth:`Meter.mark` returns one and
:meth:`Meter.joules` gives the energy between two of them. :func:`pick_meter` chooses the
meter for this machine and says, in plain sentences, why any better one was not usable.
Only the standard library is imported here; ``pynvml`` is imported when NVML is asked for.
"""

from __future__ import annotations

import bisect
import codecs
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

RAPL_ROOT = "/sys/class/powercap"
KINDS = ("auto", "powermetrics", "nvml", "rapl", "estimate", "none")
DEVICES = ("cpu", "metal", "cuda")


class Meter(ABC):
    """One source of energy readings; see the module docstring for the clock."""

    name: str
    measured: bool = True

    @property
    @abstractmethod
    def label(self) -> str:
        """Human label printed beside every figure from this meter."""

    @abstractmethod
    def start(self) -> None:
        """Begin measuring (read the counters, or launch the sampler)."""

    @abstractmethod
    def mark(self) -> float:
        """``time.perf_counter()`` now, remembered so that :meth:`joules` can use it."""

    @abstractmethod
    def stop(self) -> None:
        """Stop measuring; readings up to the last mark stay available."""

    @abstractmethod
    def joules(self, t0: float, t1: float) -> dict[str, float]:
        """Energy between two timestamps: ``{"total": J, <component>: J, ...}``."""

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the meter for the benchmark's output."""
        return {"name": self.name, "measured": self.measured, "label": self.label}


def _check_interval(name: str, t0: float, t1: float, first: float, last: float) -> None:
    if t1 < t0:
        raise ValueError(f"{name}: energy asked for a reversed interval [{t0:.3f}, {t1:.3f}] s")
    if t0 < first or t1 > last:
        raise ValueError(
            f"{name}: energy asked for [{t0:.3f}, {t1:.3f}] s but readings cover only "
            f"[{first:.3f}, {last:.3f}] s; use timestamps returned by mark() after start(), "
            "and stop() the meter before asking for the last interval")


class _CounterMeter(Meter):
    """A meter over cumulative counters read at start, each mark and stop (no thread).

    Between two readings the energy is interpolated linearly in time.
    """

    def __init__(self) -> None:
        self._times: list[float] = []
        self._values: list[dict[str, float]] = []

    @abstractmethod
    def _begin(self) -> None:
        """Take the counters' starting point."""

    @abstractmethod
    def _read(self) -> dict[str, float]:
        """Cumulative joules per component since :meth:`_begin`, including ``"total"``."""

    def _record(self) -> float:
        before = time.perf_counter()
        values = self._read()
        t = (before + time.perf_counter()) / 2  # the counters were read between the two
        self._times.append(t)
        self._values.append(values)
        return t

    def start(self) -> None:
        self._times.clear()
        self._values.clear()
        self._begin()
        self._record()

    def mark(self) -> float:
        if not self._times:
            raise RuntimeError(f"{self.name}: call start() before mark()")
        return self._record()

    def stop(self) -> None:
        if self._times:
            self._record()

    def _at(self, t: float) -> dict[str, float]:
        i = bisect.bisect_left(self._times, t)
        if self._times[i] == t:
            return self._values[i]
        ta, tb = self._times[i - 1], self._times[i]
        va, vb = self._values[i - 1], self._values[i]
        f = (t - ta) / (tb - ta)
        return {k: va[k] + f * (vb[k] - va[k]) for k in va}

    def joules(self, t0: float, t1: float) -> dict[str, float]:
        if not self._times:
            raise ValueError(f"{self.name}: no readings; call start() and mark() first")
        _check_interval(self.name, t0, t1, self._times[0], self._times[-1])
        a, b = self._at(t0), self._at(t1)
        return {k: b[k] - a[k] for k in b}


# ---------------------------------------------------------------- estimate


def _check_watts(watts: float) -> float:
    if isinstance(watts, bool) or not isinstance(watts, (int, float)) or not math.isfinite(watts) or watts <= 0:
        raise ValueError(f"the estimate needs a positive power in watts (--watts), got {watts!r}")
    return float(watts)


class EstimateMeter(Meter):
    """Joules = stated watts x seconds. Not a measurement, and labelled so."""

    name = "estimate"
    measured = False

    def __init__(self, watts: float) -> None:
        self.watts = _check_watts(watts)
        self._span: list[float] = []

    @property
    def label(self) -> str:
        w = f"{self.watts:.1f}" if round(self.watts, 1) == self.watts else f"{self.watts:g}"
        return f"estimate: {w} W stated (--watts), not measured"

    def start(self) -> None:
        self._span = [time.perf_counter()]

    def mark(self) -> float:
        if not self._span:
            raise RuntimeError("estimate: call start() before mark()")
        t = time.perf_counter()
        self._span[1:] = [t]
        return t

    def stop(self) -> None:
        self.mark()

    def joules(self, t0: float, t1: float) -> dict[str, float]:
        if not self._span:
            raise ValueError("estimate: no readings; call start() and mark() first")
        _check_interval(self.name, t0, t1, self._span[0], self._span[-1])
        return {"total": self.watts * (t1 - t0)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "watts": self.watts}


# ---------------------------------------------------------------- NVML


def _nvml_module() -> Any:
    """``pynvml`` (package nvidia-ml-py), imported only when NVML is asked for."""
    try:
        import pynvml
    except ImportError as e:
        raise RuntimeError("NVML: the pynvml module is missing: pip install nvidia-ml-py") from e
    return pynvml


def open_nvml_device(gpu_index: int, nvml: Any = None) -> tuple[Any, Any, str]:
    """``(pynvml module, device handle, GPU name)``; RuntimeError saying why NVML is unusable."""
    nvml = _nvml_module() if nvml is None else nvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise RuntimeError(f"NVML: cannot initialise ({e}): is the NVIDIA driver installed and loaded?") from e
    try:
        count = nvml.nvmlDeviceGetCount()
        if not 0 <= gpu_index < count:
            raise RuntimeError(f"NVML: no GPU with index {gpu_index} (NVML sees {count})")
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        name = nvml.nvmlDeviceGetName(handle)
    except nvml.NVMLError as e:
        raise RuntimeError(f"NVML: cannot open GPU {gpu_index}: {e}") from e
    return nvml, handle, name.decode() if isinstance(name, bytes) else str(name)


class NvmlMeter(_CounterMeter):
    """The GPU's total energy counter (millijoules since the driver loaded; Volta or newer)."""

    name = "nvml"

    def __init__(self, gpu_index: int = 0, *, nvml: Any = None) -> None:
        super().__init__()
        self.gpu_index = gpu_index
        self._nvml, self._handle, self.gpu_name = open_nvml_device(gpu_index, nvml)
        self._start_mj = self._energy_mj()

    def _energy_mj(self) -> int:
        nvml = self._nvml
        try:
            return nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except nvml.NVMLError_NotSupported as e:
            raise RuntimeError(
                f"NVML: GPU {self.gpu_index} ({self.gpu_name}) does not support the total energy counter "
                "(nvmlDeviceGetTotalEnergyConsumption needs a Volta or newer GPU); "
                "pass --energy estimate --watts W instead") from e
        except nvml.NVMLError as e:
            raise RuntimeError(f"NVML: reading GPU {self.gpu_index}'s energy counter failed: {e}") from e

    @property
    def label(self) -> str:
        return f"NVML total energy, GPU {self.gpu_index} {self.gpu_name} (measured)"

    def _begin(self) -> None:
        self._start_mj = self._energy_mj()

    def _read(self) -> dict[str, float]:
        j = (self._energy_mj() - self._start_mj) / 1000.0
        return {"total": j, "gpu": j}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpu_index": self.gpu_index, "gpu_name": self.gpu_name,
                "counter": "nvmlDeviceGetTotalEnergyConsumption (mJ)"}


# ---------------------------------------------------------------- RAPL

_ZONE_ID = re.compile(r"^(?P<type>[a-z][a-z-]*)(?P<path>(?::\d+)+)$")


def read_rapl(root: str = RAPL_ROOT) -> dict[str, dict[str, Any]]:
    """Every powercap zone under ``root``: ``{zone id: {"name", "energy_uj", "max_energy_range_uj", "parent"}}``.

    Zone ids look like ``intel-rapl:0`` (a package), ``intel-rapl:0:1`` (its subzone,
    whose ``parent`` is ``intel-rapl:0``) or ``intel-rapl-mmio:0``.
    """
    base = Path(root)
    entries = sorted(p for p in base.iterdir() if _ZONE_ID.match(p.name)) if base.is_dir() else []
    zones: dict[str, dict[str, Any]] = {}
    for path in entries:
        energy = path / "energy_uj"
        if not energy.exists():
            continue
        try:
            energy_uj = int(energy.read_text())
            max_uj = int((path / "max_energy_range_uj").read_text())
        except PermissionError as e:
            raise PermissionError(
                f"RAPL: {energy} is not readable (root only since Linux 5.10): run as root or "
                f"`sudo chmod a+r {base}/*/energy_uj`") from e
        parent = path.name.rsplit(":", 1)[0]
        zones[path.name] = {"name": (path / "name").read_text().strip(), "energy_uj": energy_uj,
                            "max_energy_range_uj": max_uj, "parent": parent if ":" in parent else None}
    if not zones:
        raise FileNotFoundError(
            f"RAPL: no energy counters under {root}: this is not an x86 Linux machine, or the "
            "intel_rapl_msr module is not loaded (`sudo modprobe intel_rapl_msr`)")
    return zones


def _rapl_layout(zones: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """``({component key: zone id}, zone ids summed into the total)``.

    ``intel-rapl-mmio`` zones repeat the MSR zones of the same name and are dropped.
    The total is ``psys`` alone when present (it covers the whole platform); otherwise
    the packages plus DRAM: DRAM is listed under its package but is not part of the
    package's energy, while ``core``/``uncore`` are and are never added to it.
    """
    msr_names = {z["name"] for zid, z in zones.items() if zid.startswith("intel-rapl:")}
    kept = {zid: z for zid, z in zones.items()
            if not (zid.startswith("intel-rapl-mmio:") and z["name"] in msr_names)}
    names = [z["name"] for z in kept.values()]
    keys = {}
    for zid, z in kept.items():
        key = z["name"]
        if names.count(key) > 1:
            parent = kept.get(z["parent"] or "")
            key = f"{parent['name']}/{key}" if parent else zid
        keys[key] = zid
    psys = [zid for zid, z in kept.items() if z["name"] == "psys"]
    total = psys or [zid for zid, z in kept.items()
                     if (z["parent"] is None and z["name"].startswith("package")) or z["name"] == "dram"]
    return keys, total or [zid for zid, z in kept.items() if z["parent"] is None]


def rapl_delta_joules(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Joules between two :func:`read_rapl` readings: ``{"total": J, <zone name>: J, ...}``.

    A counter that went backwards wrapped once: ``max_energy_range_uj`` is added. (At
    200 W a package counter wraps about every 20 minutes; read it more often than that.)
    """
    keys, total = _rapl_layout(after)
    delta = {}
    for zid, z in after.items():
        d = z["energy_uj"] - before[zid]["energy_uj"]
        delta[zid] = (d + z["max_energy_range_uj"] if d < 0 else d) / 1e6
    return {"total": sum(delta[zid] for zid in total), **{k: delta[zid] for k, zid in keys.items()}}


class RaplMeter(_CounterMeter):
    """CPU package (and DRAM) energy from the Linux powercap RAPL counters."""

    name = "rapl"

    def __init__(self, root: str = RAPL_ROOT) -> None:
        super().__init__()
        self.root = root
        self._last = read_rapl(root)
        self._keys, self._total = _rapl_layout(self._last)
        self._sum: dict[str, float] = {}

    @property
    def label(self) -> str:
        by_zone = {zid: key for key, zid in self._keys.items()}
        return f"RAPL {' + '.join(by_zone[zid] for zid in self._total)} (measured)"

    def _begin(self) -> None:
        self._last = read_rapl(self.root)
        self._sum = dict.fromkeys(["total", *self._keys], 0.0)

    def _read(self) -> dict[str, float]:
        now = read_rapl(self.root)
        for k, j in rapl_delta_joules(self._last, now).items():
            self._sum[k] += j
        self._last = now
        return dict(self._sum)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": self.root,
                "zones": {key: f"{zid} ({self._last[zid]['name']})" for key, zid in self._keys.items()},
                "total_zones": self._total}


# ---------------------------------------------------------------- powermetrics

_PM_HEADER = re.compile(r"^\*\*\* Sampled system activity .*?\(([0-9.]+)\s*ms elapsed\) \*\*\*")
_PM_POWER = re.compile(r"^(CPU|GPU|ANE|DRAM) Power:\s*([0-9.]+)\s*(mW|W)$")
_PM_COMBINED = re.compile(r"^Combined Power \([^)]*\):\s*([0-9.]+)\s*(mW|W)$")
_PM_PACKAGE = re.compile(
    r"^(?:Intel energy model derived package power \(CPUs\+GT\+SA\)|Package Power):\s*([0-9.]+)\s*(mW|W)$")
_PM_PRESSURE = re.compile(r"^Current pressure level:\s*(\w+)")
_PM_FIELDS = ("cpu_w", "gpu_w", "ane_w", "dram_w", "combined_w", "package_w", "thermal_pressure")
_PM_PARTS = {"cpu": "cpu_w", "gpu": "gpu_w", "ane": "ane_w", "dram": "dram_w", "package": "package_w"}


def _watts(value: str, unit: str) -> float:
    return float(value) / (1000.0 if unit == "mW" else 1.0)


class PowermetricsParser:
    """Incremental parser of ``powermetrics`` text output: feed chunks, get finished samples.

    A sample is finished when the next sample's header (or :meth:`close`) arrives. With a
    ``clock``, each sample gets ``t_end`` = ``clock()`` read when its header line is parsed:
    powermetrics prints a sample just after its interval ends.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._tail = ""
        self._sample: dict[str, Any] | None = None
        self._sealed = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        *lines, self._tail = (self._tail + text).split("\n")
        return [s for s in map(self._line, lines) if s is not None]

    def close(self) -> list[dict[str, Any]]:
        """Finish the input: the last (unterminated) sample, if any."""
        done = [s for s in [self._line(self._tail)] if s is not None]
        self._tail = ""
        if self._sample is not None:
            done.append(self._finish())
        return done

    def _finish(self) -> dict[str, Any]:
        s, self._sample = self._sample, None
        assert s is not None
        if s["combined_w"] is None and any(s[k] is not None for k in ("cpu_w", "gpu_w", "ane_w")):
            s["combined_w"] = sum(s[k] or 0.0 for k in ("cpu_w", "gpu_w", "ane_w"))
        return s

    def _line(self, line: str) -> dict[str, Any] | None:
        line = line.strip()
        header = _PM_HEADER.match(line)
        if header:
            done = self._finish() if self._sample is not None else None
            self._sample = {"elapsed_s": float(header.group(1)) / 1000.0, **dict.fromkeys(_PM_FIELDS)}
            if self._clock is not None:
                self._sample["t_end"] = self._clock()
            self._sealed = False
            return done
        s = self._sample
        if s is None or self._sealed:
            return None
        if line.startswith("*** "):  # any other top-level block (e.g. a running average) ends the sample
            self._sealed = True
            return None
        # The first value of a field wins: newer macOS prints "GPU Power" twice per sample.
        if m := _PM_POWER.match(line):
            key = m.group(1).lower() + "_w"
            s[key] = s[key] if s[key] is not None else _watts(m.group(2), m.group(3))
        elif m := _PM_COMBINED.match(line):
            s["combined_w"] = s["combined_w"] if s["combined_w"] is not None else _watts(*m.groups())
        elif m := _PM_PACKAGE.match(line):
            s["package_w"] = s["package_w"] if s["package_w"] is not None else _watts(*m.groups())
        elif m := _PM_PRESSURE.match(line):
            s["thermal_pressure"] = s["thermal_pressure"] or m.group(1)
        return None


def parse_powermetrics(text: str) -> list[dict[str, Any]]:
    """Every sample in ``powermetrics`` text output.

    Each: ``elapsed_s``, ``cpu_w``, ``gpu_w``, ``ane_w``, ``dram_w``, ``combined_w`` (the
    "Combined Power (CPU + GPU + ANE)" line, else the sum of the parts present),
    ``package_w`` (Intel Macs' derived package power; "Package Power" on older macOS)
    and ``thermal_pressure`` (e.g. ``"Nominal"``); None where the output has no such line.
    """
    parser = PowermetricsParser()
    return parser.feed(text) + parser.close()


def _sample_total(s: dict[str, Any]) -> float | None:
    return s["combined_w"] if s["combined_w"] is not None else s["package_w"]


def integrate_samples(samples: Sequence[dict[str, Any]], t0: float, t1: float) -> dict[str, float]:
    """Energy in ``[t0, t1]`` from samples of constant power over ``[t_start, t_end]``.

    ``total`` is CPU+GPU+ANE where known, else the package power; a component is
    reported only if every overlapping sample has it.
    """
    spans = [(s, min(t1, s["t_end"]) - max(t0, s["t_start"])) for s in samples]
    spans = [(s, dt) for s, dt in spans if dt > 0]
    pool = [s for s, _ in spans] or samples
    parts = {name: key for name, key in _PM_PARTS.items() if all(s[key] is not None for s in pool)}
    out = {"total": 0.0, **dict.fromkeys(parts, 0.0)}
    for s, dt in spans:
        total = _sample_total(s)
        if total is None:
            raise ValueError(f"powermetrics: the sample ending at {s['t_end']:.3f} s has no power reading; "
                             "was the cpu_power sampler enabled?")
        out["total"] += total * dt
        for name, key in parts.items():
            out[name] += s[key] * dt
    return out


def _apple_silicon() -> bool:
    """True on Apple Silicon, also under Rosetta (where platform.machine() says x86_64)."""
    if platform.machine() == "arm64":
        return True
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm64"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "1"


class PowermetricsMeter(Meter):
    """CPU/GPU/ANE power from ``sudo -n powermetrics``, integrated over time.

    powermetrics runs on a pseudo-terminal (so its output is line-buffered) and a reader
    thread parses it as it arrives. A sample is stamped with ``perf_counter()`` when its
    header arrives and covers ``[t_end - elapsed, t_end]``; as powermetrics samples back to
    back, a sample that starts within half an interval of the previous one's end starts
    exactly there, so that the jitter of the arrival times neither overlaps nor leaves gaps.
    ``samples`` holds the parsed samples (with ``t_start``, ``t_end``), thermal pressure included.
    """

    name = "powermetrics"

    def __init__(self, interval_ms: int = 100, *, sudo: Sequence[str] = ("sudo", "-n"),
                 command: Sequence[str] | None = None, samplers: str | None = None) -> None:
        if interval_ms < 10:
            raise ValueError(f"powermetrics: interval_ms must be at least 10, got {interval_ms}")
        self.interval_ms = interval_ms
        if samplers is None:
            intel_mac = sys.platform == "darwin" and not _apple_silicon()
            samplers = "cpu_power,gpu_power,thermal" if intel_mac else "cpu_power,gpu_power,ane_power,thermal"
        prefix = list(command) if command is not None else [*sudo, "powermetrics"]
        self.argv = [*prefix, "--samplers", samplers, "-i", str(interval_ms)]
        self.samples: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._eof = False
        self._last_mark = -math.inf

    @property
    def label(self) -> str:
        with self._cond:
            package_only = bool(self.samples) and all(s["combined_w"] is None for s in self.samples)
        what = "package (CPUs+GT+SA)" if package_only else "CPU+GPU+ANE"
        return f"powermetrics {what}, every {self.interval_ms} ms (measured)"

    def start(self) -> None:
        import pty  # POSIX only; imported here so that this module imports everywhere

        if self._proc is not None:
            raise RuntimeError("powermetrics: already started")
        self.samples, self._eof, self._last_mark = [], False, -math.inf
        master, slave = pty.openpty()
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=slave,
                                          stderr=subprocess.PIPE, close_fds=True)
        except OSError as e:
            os.close(master)
            raise RuntimeError(f"powermetrics: cannot run {' '.join(self.argv)}: {e}") from e
        finally:
            os.close(slave)
        self._fd = master
        self._thread = threading.Thread(target=self._read_loop, name="powermetrics-reader", daemon=True)
        self._thread.start()
        wait_s = max(5.0, 5 * self.interval_ms / 1000)
        deadline = time.perf_counter() + wait_s
        with self._cond:
            while not self.samples:
                if self._eof or self._proc.poll() is not None:
                    break
                if time.perf_counter() > deadline:
                    break
                self._cond.wait(0.05)
            started = bool(self.samples)
        if not started:
            exited = self._proc.poll() is not None
            err = self._shutdown()
            if exited:
                raise RuntimeError(f"powermetrics exited before its first sample: {err or 'no message'} "
                                   f"(command: {' '.join(self.argv)})")
            raise RuntimeError(f"powermetrics printed no sample within {wait_s:g} s "
                               f"(command: {' '.join(self.argv)})")

    def _read_loop(self) -> None:
        parser = PowermetricsParser(clock=time.perf_counter)
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # EIO: the other side of the terminal closed
                data = b""
            if not data:
                break
            self._add(parser.feed(decode(data)))
        # The sample still open at the end may have been cut short: it is not kept.
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _add(self, done: list[dict[str, Any]]) -> None:
        if not done:
            return
        with self._cond:
            for s in done:
                s["t_start"] = s["t_end"] - s["elapsed_s"]
                if self.samples and s["t_start"] - self.samples[-1]["t_end"] < s["elapsed_s"] / 2:
                    s["t_start"] = self.samples[-1]["t_end"]
                self.samples.append(s)
            self._cond.notify_all()

    def mark(self) -> float:
        if self._proc is None:
            raise RuntimeError("powermetrics: call start() before mark()")
        self._last_mark = time.perf_counter()
        return self._last_mark

    def stop(self) -> None:
        """Wait until the samples cover the last mark, then end powermetrics."""
        if self._proc is None:
            return
        deadline = time.perf_counter() + max(3.0, 4 * self.interval_ms / 1000)
        with self._cond:
            while not self._eof and time.perf_counter() < deadline and (
                    not self.samples or self.samples[-1]["t_end"] < self._last_mark):
                self._cond.wait(0.05)
        self._shutdown()

    def _shutdown(self) -> str:
        """End the process and the reader; its stderr text."""
        proc, self._proc = self._proc, None
        assert proc is not None
        if proc.poll() is None:
            proc.terminate()  # sudo relays the signal to powermetrics
        try:
            err = proc.communicate(timeout=3)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                err = proc.communicate(timeout=3)[1]
            except subprocess.TimeoutExpired:  # an orphan still holds stderr open
                err = b""
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._thread is None or not self._thread.is_alive():
            os.close(self._fd)  # never under a reader still blocked on it
        self._fd, self._thread = -1, None
        return err.decode(errors="replace").strip()

    def joules(self, t0: float, t1: float) -> dict[str, float]:
        with self._cond:
            samples = list(self.samples)
        if not samples:
            raise ValueError("powermetrics: no samples; call start() first")
        _check_interval(self.name, t0, t1, samples[0]["t_start"], samples[-1]["t_end"])
        return integrate_samples(samples, t0, t1)

    def describe(self) -> dict[str, Any]:
        with self._cond:
            n = len(self.samples)
        return {**super().describe(), "interval_ms": self.interval_ms, "command": self.argv, "samples": n}


# ---------------------------------------------------------------- choosing


def _platform() -> str:
    return sys.platform


def _sudo_refusal() -> str | None:
    """None if this user may run powermetrics through ``sudo -n``; else why not."""
    if os.geteuid() == 0:
        return None
    if shutil.which("sudo") is None:
        return "powermetrics needs root and sudo is not installed"
    try:
        check = subprocess.run(["sudo", "-n", "-l", "/usr/bin/powermetrics"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"powermetrics needs root and `sudo -n` could not be checked ({e})"
    if check.returncode == 0:
        return None
    why = check.stderr.strip() or "refused"
    return (f"powermetrics needs sudo without a password (`sudo -n powermetrics`: {why}): run `sudo -v` "
            "first, or allow it in sudoers (`<you> ALL=(root) NOPASSWD: /usr/bin/powermetrics`), "
            "or pass --energy estimate --watts W")


def _try_powermetrics() -> PowermetricsMeter:
    if _platform() != "darwin":
        raise RuntimeError("powermetrics is macOS only")
    refusal = _sudo_refusal()
    if refusal:
        raise RuntimeError(refusal)
    return PowermetricsMeter(sudo=() if os.geteuid() == 0 else ("sudo", "-n"))


def _try_rapl() -> RaplMeter:
    if not _platform().startswith("linux"):
        raise RuntimeError("RAPL counters are read from Linux's /sys/class/powercap")
    try:
        return RaplMeter(RAPL_ROOT)
    except (PermissionError, FileNotFoundError) as e:
        raise RuntimeError(str(e)) from e


def pick_meter(kind: str = "auto", *, device: str = "cpu", watts: float | None = None,
               gpu_index: int = 0) -> tuple[Meter | None, list[str]]:
    """The energy meter to use, and sentences explaining each fallback.

    ``kind``: auto | powermetrics | nvml | rapl | estimate | none; ``device``: cpu | metal | cuda.
    auto tries NVML for cuda, powermetrics on macOS, RAPL on Linux (not for cuda: it would
    miss the GPU), then the estimate if ``watts`` is given, else returns no meter. A kind
    asked for by name that cannot be used raises RuntimeError with the reason.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown energy meter {kind!r}; choose one of {', '.join(KINDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if watts is not None:
        _check_watts(watts)
    if kind == "none":
        return None, []
    if kind == "estimate":
        if watts is None:
            raise ValueError("the estimate needs the machine's power: pass --watts W")
        return EstimateMeter(watts), []
    tries: dict[str, Callable[[], Meter]] = {
        "nvml": lambda: NvmlMeter(gpu_index), "powermetrics": _try_powermetrics, "rapl": _try_rapl}
    if kind != "auto":
        return tries[kind](), []

    notes: list[str] = []
    order = ["nvml"] if device == "cuda" else []
    if _platform() == "darwin":
        order.append("powermetrics")
    elif _platform().startswith("linux") and device != "cuda":
        order.append("rapl")
    for name in order:
        try:
            meter = tries[name]()
        except RuntimeError as e:
            notes.append(str(e))
            continue
        if watts is not None:
            notes.append(f"--watts ignored: {meter.label}")
        return meter, notes
    if device == "cuda" and _platform().startswith("linux"):
        notes.append("RAPL is not used for a cuda run: it measures the CPU, not the GPU running the model")
    if watts is not None:
        return EstimateMeter(watts), notes
    notes.append("no energy meter on this machine; pass --watts W for an estimate")
    return None, notes
