"""Energy meters and thermal probes of the benchmark (mlx_synapse.benchmarks.energy / .thermal),
on recorded outputs in tests/fixtures/bench: no Mac, GPU, RAPL or thermal sysfs needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_synapse.benchmarks import energy, thermal
from mlx_synapse.benchmarks.energy import (
    EstimateMeter,
    NvmlMeter,
    PowermetricsMeter,
    PowermetricsParser,
    RaplMeter,
    integrate_samples,
    parse_powermetrics,
    pick_meter,
    rapl_delta_joules,
    read_rapl,
)
from mlx_synapse.benchmarks.thermal import (
    LinuxSysfsProbe,
    NvmlProbe,
    PmsetProbe,
    PowermetricsPressureProbe,
    nvml_throttle_reasons,
    parse_pmset_therm,
    parse_vcgencmd_throttled,
    pick_probes,
    read_linux_thermal,
    verdict,
)

FIX = Path(__file__).parent / "fixtures" / "bench"
M1PRO = (FIX / "powermetrics_m1pro_macos14.txt").read_text()
M1MAX = (FIX / "powermetrics_m1max_macos13beta.txt").read_text()
INTEL = (FIX / "powermetrics_intel_macos13.txt").read_text()


def col(samples, key):
    return [s[key] for s in samples]


# ---------------------------------------------------------------- powermetrics parsing


def test_parse_apple_silicon_macos14():
    s = parse_powermetrics(M1PRO)
    assert len(s) == 5
    assert col(s, "elapsed_s") == pytest.approx([0.10042, 0.10107, 0.10013, 0.10088, 0.10031])
    assert col(s, "cpu_w") == pytest.approx([1.873, 2.104, 1.968, 2.251, 2.012])
    # "GPU Power" is printed in the processor and the GPU sections: counted once.
    assert col(s, "gpu_w") == pytest.approx([11.842, 12.315, 12.690, 12.477, 11.934])
    assert col(s, "ane_w") == pytest.approx([0, 0, 0, 0, 0.002])
    # The printed combined power wins over the parts: sample 3 prints 14657 mW for 1968 + 12690 + 0.
    assert col(s, "combined_w") == pytest.approx([13.715, 14.419, 14.657, 14.728, 13.948])
    assert s[2]["cpu_w"] + s[2]["gpu_w"] + s[2]["ane_w"] == pytest.approx(14.658)
    assert col(s, "thermal_pressure") == ["Nominal", "Nominal", "Nominal", "Moderate", "Nominal"]
    assert col(s, "package_w") == [None] * 5 and col(s, "dram_w") == [None] * 5


def test_parse_early_macos13_without_combined_line():
    s = parse_powermetrics(M1MAX)
    assert len(s) == 2
    assert col(s, "elapsed_s") == pytest.approx([1.00412, 1.00361])
    # "E-Cluster Power" / "P0-Cluster Power" lines are not the CPU power.
    assert col(s, "cpu_w") == pytest.approx([23.639, 23.282])
    assert col(s, "gpu_w") == pytest.approx([0.109, 0.028])
    assert col(s, "dram_w") == pytest.approx([2.545, 2.461])
    assert col(s, "package_w") == pytest.approx([31.688, 31.067])
    assert col(s, "combined_w") == pytest.approx([23.639 + 0.109, 23.282 + 0.028])  # the sum of the parts
    assert col(s, "thermal_pressure") == [None, None]


def test_parse_intel_mac():
    s = parse_powermetrics(INTEL)
    assert len(s) == 4
    assert col(s, "elapsed_s") == pytest.approx([0.10053, 0.10120, 0.10047, 0.10096])
    assert col(s, "package_w") == pytest.approx([21.84, 23.07, 22.51, 19.96])
    assert col(s, "cpu_w") == [None] * 4 and col(s, "combined_w") == [None] * 4
    assert col(s, "thermal_pressure") == ["Nominal", "Nominal", "Moderate", "Moderate"]


def test_parse_unit_variants_and_crlf():
    text = ("*** Sampled system activity (Mon Nov 23 10:01:15 2026 +0100) (250.00ms elapsed) ***\r\n"
            "CPU Power: 1.25W\r\nGPU Power: 36mW\r\nANE Power: 0.5 W\r\n"
            "*** Sampled system activity (1000.13ms elapsed) ***\r\n"
            "GPU Power: 8231 mW\r\n")
    a, b = parse_powermetrics(text)
    assert (a["elapsed_s"], a["cpu_w"], a["gpu_w"], a["ane_w"]) == pytest.approx((0.25, 1.25, 0.036, 0.5))
    assert a["combined_w"] == pytest.approx(1.786)
    assert (b["elapsed_s"], b["cpu_w"], b["gpu_w"], b["combined_w"]) == (pytest.approx(1.00013), None, 8.231, 8.231)


def test_parse_first_value_wins_and_other_blocks_are_ignored():
    text = ("Machine model: Mac14,2\nCPU Power: 999 mW\n"  # before any sample: ignored
            "*** Sampled system activity (100.00ms elapsed) ***\n"
            "GPU Power: 30 mW\nGPU Power: 31 mW\nCPU Power: 100 mW\n"
            "*** Running average over 10 samples ***\nCPU Power: 5000 mW\n")
    (s,) = parse_powermetrics(text)
    assert (s["gpu_w"], s["cpu_w"], s["combined_w"]) == pytest.approx((0.030, 0.100, 0.130))


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, len(M1PRO)), max_size=25), crlf=st.booleans())
def test_incremental_parsing_matches_one_shot(cuts, crlf):
    text = M1PRO.replace("\n", "\r\n") if crlf else M1PRO
    bounds = [0, *sorted(min(c, len(text)) for c in cuts), len(text)]
    parser = PowermetricsParser()
    got = []
    for a, b in zip(bounds, bounds[1:]):
        got += parser.feed(text[a:b])
    got += parser.close()
    assert got == parse_powermetrics(M1PRO)


def test_parser_stamps_each_sample_when_its_header_arrives():
    clock = iter([10.0, 10.1, 10.2]).__next__
    parser = PowermetricsParser(clock=clock)
    blocks = M1PRO.split("*** Sampled")
    assert parser.feed(blocks[0] + "*** Sampled" + blocks[1]) == []  # not finished until the next header
    (first,) = parser.feed("*** Sampled" + blocks[2])
    assert first["t_end"] == 10.0 and first["combined_w"] == pytest.approx(13.715)


def test_integrate_samples_over_partial_overlaps():
    def sample(t0, t1, cpu, gpu):
        return {"t_start": t0, "t_end": t1, "cpu_w": cpu, "gpu_w": gpu, "ane_w": 0.0, "dram_w": None,
                "combined_w": cpu + gpu, "package_w": None}

    samples = [sample(1.0, 1.1, 2.0, 8.0), sample(1.1, 1.2, 5.0, 15.0), sample(1.2, 1.3, 4.0, 26.0)]
    j = integrate_samples(samples, 1.05, 1.25)
    # 10 W x 0.05 s + 20 W x 0.1 s + 30 W x 0.05 s
    assert j == pytest.approx({"total": 0.5 + 2.0 + 1.5, "cpu": 0.1 + 0.5 + 0.2, "gpu": 0.4 + 1.5 + 1.3, "ane": 0.0})
    assert integrate_samples(samples, 1.12, 1.17) == pytest.approx({"total": 1.0, "cpu": 0.25, "gpu": 0.75, "ane": 0})
    intel = [{**sample(0.0, 0.1, 0, 0), "cpu_w": None, "gpu_w": None, "ane_w": None, "combined_w": None,
              "package_w": 21.84}]
    assert integrate_samples(intel, 0.0, 0.05) == pytest.approx({"total": 1.092, "package": 1.092})


FAKE_POWERMETRICS = """\
import re, sys, time
args = sys.argv[1:]
interval = int(args[args.index("-i") + 1]) / 1000
head, *blocks = open({fixture!r}).read().split("*** Sampled system activity")
sys.stdout.write(head)
sys.stdout.flush()
last, i = time.perf_counter(), 0
while True:
    time.sleep(interval)
    now = time.perf_counter()
    block = re.sub(r"\\(([0-9.]+)ms elapsed\\)", "(%.2fms elapsed)" % ((now - last) * 1000), blocks[i % len(blocks)], 1)
    sys.stdout.write("*** Sampled system activity" + block)
    sys.stdout.flush()
    last, i = now, i + 1
"""


def test_powermetrics_meter_end_to_end_with_a_fake_powermetrics(tmp_path):
    fake = tmp_path / "powermetrics.py"
    fake.write_text(FAKE_POWERMETRICS.format(fixture=str(FIX / "powermetrics_m1pro_macos14.txt")))
    meter = PowermetricsMeter(interval_ms=50, command=[sys.executable, str(fake)])
    assert meter.argv[-4:] == ["--samplers", "cpu_power,gpu_power,ane_power,thermal", "-i", "50"]
    meter.start()
    try:
        assert meter.samples, "start() returns once the first sample is in"
        t0 = meter.mark()
        time.sleep(0.3)
        t1 = meter.mark()
    finally:
        meter.stop()
    assert meter._proc is None
    samples = list(meter.samples)
    assert samples[-1]["t_end"] >= t1
    assert all(a["t_end"] == b["t_start"] for a, b in zip(samples, samples[1:]))  # back to back
    assert samples[0]["t_start"] == samples[0]["t_end"] - samples[0]["elapsed_s"]
    powers = [s["combined_w"] for s in parse_powermetrics(M1PRO)]
    j = meter.joules(t0, t1)
    # Constant power within each sample, no gap: the mean power lies within the fixture's.
    assert min(powers) * (1 - 1e-9) <= j["total"] / (t1 - t0) <= max(powers) * (1 + 1e-9)
    assert j["cpu"] + j["gpu"] + j["ane"] == pytest.approx(j["total"], rel=1e-3)
    assert {s["thermal_pressure"] for s in samples} <= {"Nominal", "Moderate"}
    assert meter.label == "powermetrics CPU+GPU+ANE, every 50 ms (measured)"
    assert json.loads(json.dumps(meter.describe()))["samples"] == len(samples)
    with pytest.raises(ValueError, match="cover only"):
        meter.joules(t0 - 60, t1)


def test_powermetrics_meter_reports_why_it_could_not_start():
    refuse = "import sys; sys.stderr.write('sudo: a password is required\\n'); sys.exit(1)"
    meter = PowermetricsMeter(command=[sys.executable, "-c", refuse])
    with pytest.raises(RuntimeError, match="exited before its first sample: sudo: a password is required"):
        meter.start()


# ---------------------------------------------------------------- RAPL


@pytest.fixture
def powercap(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(FIX / "powercap", root)
    return root


def energy_uj(root, zone):
    return int((root / zone / "energy_uj").read_text())


def add_joules(root, **zones):
    for zone, j in zones.items():
        (root / zone / "energy_uj").write_text(f"{energy_uj(root, zone) + round(j * 1e6)}\n")


def test_read_rapl(powercap):
    zones = read_rapl(str(powercap))
    assert sorted(zones) == ["intel-rapl-mmio:0", "intel-rapl:0", "intel-rapl:0:0", "intel-rapl:0:1", "intel-rapl:0:2"]
    assert zones["intel-rapl:0"] == {"name": "package-0", "energy_uj": 48123456789,
                                     "max_energy_range_uj": 262143328850, "parent": None}
    assert [zones[f"intel-rapl:0:{i}"]["name"] for i in range(3)] == ["core", "uncore", "dram"]
    assert {zones[f"intel-rapl:0:{i}"]["parent"] for i in range(3)} == {"intel-rapl:0"}
    with pytest.raises(FileNotFoundError, match="intel_rapl_msr"):
        read_rapl(str(powercap / "missing"))


def test_rapl_delta_sums_package_and_dram_once(powercap):
    before = read_rapl(str(powercap))
    add_joules(powercap, **{"intel-rapl:0": 10, "intel-rapl:0:0": 6, "intel-rapl:0:1": 1, "intel-rapl:0:2": 2,
                            "intel-rapl-mmio:0": 10})
    delta = rapl_delta_joules(before, read_rapl(str(powercap)))
    # core and uncore are inside the package; DRAM is not; the MMIO copy of package-0 is dropped.
    assert delta == pytest.approx({"total": 12.0, "package-0": 10.0, "core": 6.0, "uncore": 1.0, "dram": 2.0})


def test_rapl_wraparound(powercap):
    before = read_rapl(str(powercap))
    (powercap / "intel-rapl:0" / "energy_uj").write_text("4000000\n")
    delta = rapl_delta_joules(before, read_rapl(str(powercap)))
    expected = (4_000_000 + 262_143_328_850 - 48_123_456_789) / 1e6
    assert delta["package-0"] == pytest.approx(expected)
    assert delta["total"] == pytest.approx(expected)


def test_rapl_psys_alone_is_the_total(powercap):
    psys = powercap / "intel-rapl:1"
    psys.mkdir()
    for name, value in [("name", "psys"), ("energy_uj", "1500000000"), ("max_energy_range_uj", "262143328850")]:
        (psys / name).write_text(value + "\n")
    before = read_rapl(str(powercap))
    add_joules(powercap, **{"intel-rapl:0": 10, "intel-rapl:0:2": 2, "intel-rapl:1": 19})
    delta = rapl_delta_joules(before, read_rapl(str(powercap)))
    assert delta["total"] == pytest.approx(19.0) and delta["package-0"] == pytest.approx(10.0)
    assert RaplMeter(str(powercap)).label == "RAPL psys (measured)"


def test_rapl_two_sockets():
    def zone(name, uj, parent=None):
        return {"name": name, "energy_uj": uj, "max_energy_range_uj": 2**32, "parent": parent}

    before = {"intel-rapl:0": zone("package-0", 0), "intel-rapl:0:0": zone("dram", 0, "intel-rapl:0"),
              "intel-rapl:1": zone("package-1", 0), "intel-rapl:1:0": zone("dram", 0, "intel-rapl:1")}
    after = {k: {**z, "energy_uj": uj} for (k, z), uj in zip(before.items(), [50e6, 7e6, 40e6, 6e6])}
    assert rapl_delta_joules(before, after) == pytest.approx(
        {"total": 103.0, "package-0": 50.0, "package-0/dram": 7.0, "package-1": 40.0, "package-1/dram": 6.0})


def test_rapl_meter_marks_interpolation_and_wrap(powercap):
    meter = RaplMeter(str(powercap))
    assert meter.label == "RAPL package-0 + dram (measured)"
    meter.start()
    t0 = meter.mark()
    add_joules(powercap, **{"intel-rapl:0": 10, "intel-rapl:0:0": 6, "intel-rapl:0:2": 2})
    t1 = meter.mark()
    pkg = energy_uj(powercap, "intel-rapl:0")
    (powercap / "intel-rapl:0" / "energy_uj").write_text(f"{pkg + 5_000_000 - 262_143_328_850}\n")  # wrapped
    t2 = meter.mark()
    meter.stop()
    assert meter.joules(t0, t1) == pytest.approx({"total": 12.0, "package-0": 10.0, "core": 6.0, "uncore": 0.0,
                                                  "dram": 2.0})
    assert meter.joules(t0, t2)["total"] == pytest.approx(17.0)
    assert meter.joules(t0, (t0 + t1) / 2)["total"] == pytest.approx(6.0)  # linear between readings
    with pytest.raises(ValueError, match="cover only"):
        meter.joules(t0, t2 + 1)
    with pytest.raises(ValueError, match="reversed"):
        meter.joules(t1, t0)
    described = json.loads(json.dumps(meter.describe()))
    assert described["total_zones"] == ["intel-rapl:0", "intel-rapl:0:2"] and described["measured"] is True


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads energy_uj whatever its mode")
def test_rapl_unreadable_counter_names_the_fix(powercap):
    (powercap / "intel-rapl:0" / "energy_uj").chmod(0)
    with pytest.raises(PermissionError, match=r"not readable \(root only since Linux 5.10\): run as root or"):
        read_rapl(str(powercap))


def test_rapl_permission_message(powercap, monkeypatch):
    read_text = Path.read_text

    def deny(self, *args, **kwargs):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(PermissionError) as err:
        read_rapl(str(powercap))
    assert str(err.value) == (f"RAPL: {powercap}/intel-rapl-mmio:0/energy_uj is not readable (root only since "
                              f"Linux 5.10): run as root or `sudo chmod a+r {powercap}/*/energy_uj`")


# ---------------------------------------------------------------- NVML and the estimate


class FakeNvml:
    """The parts of pynvml the meters use, for one GPU."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self, name=b"NVIDIA H100 80GB HBM3", energy_mj=123_456_789, supported=True):
        self.name, self.energy_mj, self.supported = name, energy_mj, supported
        self.reasons, self.power_mw = 0x4, 312_456

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetName(self, handle):
        return self.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise self.NVMLError_NotSupported("Not Supported")
        return self.energy_mj

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 71

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock == self.NVML_CLOCK_SM
        return 1755

    def nvmlDeviceGetMaxClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetPowerUsage(self, handle):
        if self.power_mw is None:
            raise self.NVMLError_NotSupported("Not Supported")
        return self.power_mw

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return self.reasons


class FakeNvmlNew(FakeNvml):
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.reasons | 0x1000  # distinguishable from the old call


def test_nvml_meter():
    nv = FakeNvml()
    meter = NvmlMeter(0, nvml=nv)
    assert meter.label == "NVML total energy, GPU 0 NVIDIA H100 80GB HBM3 (measured)"
    meter.start()
    t0 = meter.mark()
    nv.energy_mj += 5_500
    t1 = meter.mark()
    nv.energy_mj += 1_000
    meter.stop()
    assert meter.joules(t0, t1) == pytest.approx({"total": 5.5, "gpu": 5.5})
    assert json.loads(json.dumps(meter.describe()))["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert NvmlMeter(0, nvml=FakeNvml(name="Tesla T4")).gpu_name == "Tesla T4"  # str names too


def test_nvml_meter_refuses_gpus_without_an_energy_counter():
    with pytest.raises(RuntimeError, match=r"does not support the total energy counter .*Volta or newer"):
        NvmlMeter(0, nvml=FakeNvml(name=b"Tesla P100-PCIE-16GB", supported=False))
    with pytest.raises(RuntimeError, match=r"no GPU with index 3 \(NVML sees 1\)"):
        NvmlMeter(3, nvml=FakeNvml())


def test_estimate_meter():
    meter = EstimateMeter(7)
    assert (meter.measured, meter.label) == (False, "estimate: 7.0 W stated (--watts), not measured")
    assert EstimateMeter(12.25).label == "estimate: 12.25 W stated (--watts), not measured"
    meter.start()
    t0 = meter.mark()
    t1 = meter.mark()
    meter.stop()
    assert meter.joules(t0, t1) == {"total": pytest.approx(7 * (t1 - t0))}
    assert meter.describe() == {"name": "estimate", "measured": False, "label": meter.label, "watts": 7.0}
    with pytest.raises(ValueError, match="positive power"):
        EstimateMeter(0)
    with pytest.raises(ValueError, match="cover only"):
        meter.joules(t0 - 1, t1)


# ---------------------------------------------------------------- choosing a meter


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A machine whose platform, sudo, RAPL and NVML are set by the test."""

    def set_(platform="linux", sudo=None, rapl=None, nvml=None):
        monkeypatch.setattr(energy, "_platform", lambda: platform)
        monkeypatch.setattr(energy, "_sudo_refusal", lambda: sudo)
        monkeypatch.setattr(energy, "RAPL_ROOT", str(rapl or tmp_path / "no-powercap"))

        def load():
            if nvml is None:
                raise RuntimeError("NVML: the pynvml module is missing: pip install nvidia-ml-py")
            return nvml

        monkeypatch.setattr(energy, "_nvml_module", load)

    return set_


def test_pick_meter_linux_rapl(machine, powercap):
    machine(rapl=powercap)
    meter, notes = pick_meter()
    assert isinstance(meter, RaplMeter) and notes == []
    meter, notes = pick_meter(watts=7)
    assert isinstance(meter, RaplMeter) and notes == ["--watts ignored: RAPL package-0 + dram (measured)"]


def test_pick_meter_falls_back_with_reasons(machine):
    machine()
    meter, notes = pick_meter()
    assert meter is None
    assert "no energy counters" in notes[0]
    assert notes[-1] == "no energy meter on this machine; pass --watts W for an estimate"
    meter, notes = pick_meter(watts=7.0)
    assert isinstance(meter, EstimateMeter) and len(notes) == 1
    with pytest.raises(RuntimeError, match="no energy counters"):
        pick_meter("rapl")


def test_pick_meter_rapl_permission_note(machine, powercap, monkeypatch):
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(PermissionError(13, "no"))
                        if self.name == "energy_uj" else read_text(self, *a, **k))
    machine(rapl=powercap)
    meter, notes = pick_meter()
    assert meter is None and "root only since Linux 5.10" in notes[0]


def test_pick_meter_macos(machine):
    refusal = ("powermetrics needs sudo without a password (`sudo -n powermetrics`: sudo: a password is "
               "required): run `sudo -v` first")
    machine(platform="darwin", sudo=refusal)
    meter, notes = pick_meter(device="metal")
    assert meter is None and notes[0] == refusal
    meter, notes = pick_meter(device="metal", watts=20)
    assert isinstance(meter, EstimateMeter) and notes == [refusal]
    with pytest.raises(RuntimeError, match="a password is required"):
        pick_meter("powermetrics")
    machine(platform="darwin")
    meter, notes = pick_meter(device="metal")
    assert isinstance(meter, PowermetricsMeter) and notes == [] and meter.argv[-2:] == ["-i", "100"]


def test_pick_meter_cuda(machine, powercap):
    machine(rapl=powercap, nvml=FakeNvml())
    meter, notes = pick_meter(device="cuda")
    assert isinstance(meter, NvmlMeter) and notes == []
    machine(rapl=powercap, nvml=FakeNvml(supported=False))
    meter, notes = pick_meter(device="cuda")
    assert meter is None
    assert "Volta or newer" in notes[0] and "RAPL is not used for a cuda run" in notes[1]
    machine(rapl=powercap)
    with pytest.raises(RuntimeError, match="pip install nvidia-ml-py"):
        pick_meter("nvml", device="cuda")


def test_pick_meter_arguments(machine):
    machine()
    assert pick_meter("none") == (None, [])
    with pytest.raises(ValueError, match="pass --watts W"):
        pick_meter("estimate")
    assert isinstance(pick_meter("estimate", watts=5)[0], EstimateMeter)
    with pytest.raises(ValueError, match="unknown energy meter"):
        pick_meter("joulescope")
    with pytest.raises(ValueError, match="unknown device"):
        pick_meter(device="tpu")
    with pytest.raises(ValueError, match="positive power"):
        pick_meter(watts=-3)


def test_sudo_refusal_message(monkeypatch):
    monkeypatch.setattr(energy.os, "geteuid", lambda: 501)
    monkeypatch.setattr(energy.shutil, "which", lambda name: "/usr/bin/sudo")
    monkeypatch.setattr(energy.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 1, "", "sudo: a password is required\n"))
    why = energy._sudo_refusal()
    assert why.startswith("powermetrics needs sudo without a password (`sudo -n powermetrics`: sudo: a password "
                          "is required): run `sudo -v` first")
    assert why.endswith("or pass --energy estimate --watts W")


# ---------------------------------------------------------------- macOS thermal


def test_parse_pmset_therm():
    nominal = parse_pmset_therm((FIX / "pmset_therm_intel_nominal.txt").read_text())
    assert nominal == {"cpu_speed_limit": 100, "cpu_scheduler_limit": 100, "cpu_available_cpus": 8,
                       "thermal_warning_level": "none recorded", "performance_warning_level": "none recorded",
                       "throttled": False}
    hot = parse_pmset_therm((FIX / "pmset_therm_intel_throttled.txt").read_text())
    assert (hot["cpu_speed_limit"], hot["thermal_warning_level"], hot["throttled"]) == (72, "5", True)
    apple = parse_pmset_therm((FIX / "pmset_therm_apple_silicon.txt").read_text())
    assert apple["cpu_speed_limit"] is None and apple["throttled"] is False
    assert parse_pmset_therm("Thermal warning level set to 0.\n")["throttled"] is False
    assert parse_pmset_therm("")["throttled"] is None


def test_pmset_probe():
    probe = PmsetProbe(command=["cat", str(FIX / "pmset_therm_intel_throttled.txt")])
    assert probe.throttled(probe.sample()) == (True, "CPU_Speed_Limit 72, thermal warning level 5")
    probe = PmsetProbe(command=["cat", str(FIX / "pmset_therm_intel_nominal.txt")])
    assert probe.signal() == {"probe": "pmset", "throttled": False, "reason": "CPU_Speed_Limit 100, no warning recorded",
                              "sample": parse_pmset_therm((FIX / "pmset_therm_intel_nominal.txt").read_text())}
    broken = PmsetProbe(command=["false"])
    assert broken.throttled(broken.sample()) == (None, "`false` failed")


def test_powermetrics_pressure_probe():
    stream = SimpleNamespace(samples=parse_powermetrics(M1PRO))
    probe = PowermetricsPressureProbe(stream)
    first = probe.sample()
    assert first == {"thermal_pressure": "Moderate", "samples": 5}
    assert probe.throttled(first) == (True, "thermal pressure Moderate")
    assert probe.throttled(probe.sample()) == (None, "no powermetrics thermal pressure since the last sample")
    stream.samples.append({**stream.samples[0]})
    assert probe.throttled(probe.sample()) == (False, "thermal pressure Nominal")


# ---------------------------------------------------------------- Linux thermal


def no_vcgencmd():
    return None


def test_read_linux_thermal_x86():
    r = read_linux_thermal(str(FIX / "sys"), vcgencmd=no_vcgencmd)
    assert (r["temp_max_c"], r["temp_max_zone"]) == (71.0, "x86_pkg_temp")
    assert (r["temp_c.acpitz"], r["temp_c.INT3400 Thermal"], r["temp_c.x86_pkg_temp"]) == (27.8, 20.0, 71.0)
    assert (r["cooling.Processor"], r["cooling.Processor#1"]) == ("0/10", "0/10")
    assert (r["cpu_cooling_devices"], r["cpu_cooling_active"]) == (2, 0)
    assert r["cpu_freq_mean_mhz"] == pytest.approx(3100.006) and r["cpu_freq_min_mhz"] == 2800.0
    assert (r["core_throttle_count"], r["package_throttle_count"]) == (3, 12)  # one package, counted once
    assert r["pi_throttled"] is None
    json.dumps(r)


def test_linux_probe_counts_throttle_events_since_its_first_sample(tmp_path):
    root = tmp_path / "sys"
    shutil.copytree(FIX / "sys", root)
    probe = LinuxSysfsProbe(str(root), vcgencmd=no_vcgencmd)
    assert probe.throttled(probe.sample()) == (False, "no throttling in throttle counters, CPU cooling devices")
    (root / "devices/system/cpu/cpu1/thermal_throttle/core_throttle_count").write_text("2\n")
    assert probe.throttled(probe.sample()) == (True, "core_throttle_count rose by 2")
    (root / "class/thermal/cooling_device0/cur_state").write_text("3\n")
    assert probe.throttled(probe.sample()) == (True, "core_throttle_count rose by 2; 1 of 2 CPU cooling devices active")


def test_linux_probe_raspberry_pi(tmp_path):
    root = tmp_path / "sys"
    shutil.copytree(FIX / "sys_rpi4", root)

    def vcgencmd(name):
        return lambda: (FIX / f"vcgencmd_get_throttled_{name}.txt").read_text()

    r = read_linux_thermal(str(root), vcgencmd=vcgencmd("0x0"))
    assert (r["temp_max_c"], r["temp_max_zone"], r["cpu_freq_mean_mhz"]) == (62.322, "cpu-thermal", 1800.0)
    assert r["core_throttle_count"] is None and r["cooling.cpufreq-cpu0"] == "0/3"
    probe = LinuxSysfsProbe(str(root), vcgencmd=vcgencmd("0x0"))
    assert probe.throttled(probe.sample()) == (False, "no throttling in CPU cooling devices, Pi firmware flags")
    probe = LinuxSysfsProbe(str(root), vcgencmd=vcgencmd("0x80008"))
    assert probe.throttled(probe.sample()) == (True, "Pi firmware 0x80008 (soft_temp_limit)")
    probe = LinuxSysfsProbe(str(root), vcgencmd=vcgencmd("0x50005"))
    assert probe.throttled(probe.sample()) == (True, "Pi firmware 0x50005 (under_voltage, throttled)")
    (root / "class/thermal/cooling_device0/cur_state").write_text("1\n")
    probe = LinuxSysfsProbe(str(root), vcgencmd=no_vcgencmd)
    assert probe.throttled(probe.sample()) == (True, "1 of 1 CPU cooling devices active")


def test_linux_probe_cannot_tell_from_temperature_alone(tmp_path):
    zone = tmp_path / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("acpitz\n")
    (zone / "temp").write_text("95000\n")
    probe = LinuxSysfsProbe(str(tmp_path), vcgencmd=no_vcgencmd)
    throttled, reason = probe.throttled(probe.sample())
    assert throttled is None and "temperature alone cannot tell" in reason


def test_parse_vcgencmd_throttled():
    def read(name):
        return parse_vcgencmd_throttled((FIX / f"vcgencmd_get_throttled_{name}.txt").read_text())

    assert read("0x0") == {"mask": 0, "flags": [], "throttled_now": False}
    assert read("0x50005") == {"mask": 0x50005, "throttled_now": True, "flags": [
        "under_voltage", "throttled", "under_voltage_occurred", "throttling_occurred"]}
    assert read("0x80008") == {"mask": 0x80008, "flags": ["soft_temp_limit", "soft_temp_limit_occurred"],
                               "throttled_now": True}
    assert parse_vcgencmd_throttled("throttled=0x20000")["throttled_now"] is False  # occurred, not now
    with pytest.raises(ValueError, match="not `vcgencmd get_throttled` output"):
        parse_vcgencmd_throttled("VCHI initialization failed")


# ---------------------------------------------------------------- NVIDIA thermal


def test_nvml_throttle_reasons():
    assert nvml_throttle_reasons(0) == []
    assert nvml_throttle_reasons(0x1) == ["gpu_idle"]
    assert nvml_throttle_reasons(0x64) == ["sw_power_cap", "sw_thermal_slowdown", "hw_thermal_slowdown"]
    assert nvml_throttle_reasons(0x188) == ["hw_slowdown", "hw_power_brake_slowdown", "display_clock_setting"]
    assert nvml_throttle_reasons(0x1010) == ["sync_boost", "unknown_0x1000"]


def test_nvml_probe():
    nv = FakeNvml()
    probe = NvmlProbe(0, nvml=nv)
    s = probe.sample()
    assert s == {"temperature_c": 71, "sm_clock_mhz": 1755, "max_sm_clock_mhz": 1980, "power_w": 312.456,
                 "clocks_event_reasons": 0x4, "clocks_event_reason_names": ["sw_power_cap"]}
    assert probe.throttled(s) == (False, "no thermal or hardware slowdown: sw_power_cap")
    nv.reasons, nv.power_mw = 0x44, None
    s = probe.sample()
    assert s["power_w"] is None
    assert probe.throttled(s) == (True, "hw_thermal_slowdown")
    newer = NvmlProbe(0, nvml=FakeNvmlNew())
    assert newer.sample()["clocks_event_reasons"] == 0x1004  # nvmlDeviceGetCurrentClocksEventReasons when present
    assert probe.describe() == {"name": "nvml", "gpu_index": 0, "gpu_name": "NVIDIA H100 80GB HBM3"}


def test_pick_probes(monkeypatch, tmp_path):
    monkeypatch.setattr(thermal, "_platform", lambda: "darwin")
    monkeypatch.setattr(thermal.shutil, "which", lambda name: f"/usr/bin/{name}")
    probes, notes = pick_probes("metal")
    assert [p.name for p in probes] == ["pmset"] and "powermetrics" in notes[0]
    meter = PowermetricsMeter(command=["powermetrics"])
    probes, notes = pick_probes("metal", powermetrics_meter=meter)
    assert [p.name for p in probes] == ["pmset", "powermetrics"] and notes == []

    monkeypatch.setattr(thermal, "_platform", lambda: "linux")
    monkeypatch.setattr(thermal, "SYS_ROOT", str(FIX / "sys"))
    monkeypatch.setattr(energy, "_nvml_module", lambda: FakeNvml())
    probes, notes = pick_probes("cuda")
    assert [p.name for p in probes] == ["linux-sysfs", "nvml"] and notes == []
    monkeypatch.setattr(thermal, "SYS_ROOT", str(tmp_path))
    monkeypatch.setattr(energy, "_nvml_module", lambda: FakeNvml(name=b"Tesla V100"))
    probes, notes = pick_probes("cpu")
    assert probes == [] and notes == [f"no thermal zones, cpufreq or thermal_throttle files under {tmp_path}: "
                                      "the OS gives no CPU thermal signal here"]


# ---------------------------------------------------------------- the verdict


def signal(probe, throttled, reason=""):
    return {"probe": probe, "throttled": throttled, "reason": reason}


def test_verdict_needs_two_windows():
    with pytest.raises(ValueError, match="at least 2 windows"):
        verdict([12.0])


def test_verdict_os_signal_of_throttling_decides():
    v = verdict([20, 20, 19.5], [signal("pmset", False, "CPU_Speed_Limit 100, no warning recorded"),
                                 signal("pmset", True, "CPU_Speed_Limit 72")])
    assert (v["throttled"], v["os_signal"], v["basis"]) == (True, "throttled", "pmset: CPU_Speed_Limit 72")
    assert (v["first_tps"], v["last_tps"], v["drop_pct"]) == (20, 19.5, 2.5)


def test_verdict_os_signals_all_clear():
    signals = [signal("linux-sysfs", False), signal("nvml", False), signal("nvml", None)]
    v = verdict([20, 20, 19.9, 20.1], signals)
    assert (v["throttled"], v["os_signal"], v["basis"]) == (False, "not throttled", "no throttling reported by linux-sysfs, nvml")
    v = verdict([20, 20, 16, 16], signals)
    assert v["throttled"] is False and v["drop_pct_tail"] == 20.0
    assert v["basis"].endswith("throughput fell 20.0% with no OS thermal signal")


def test_verdict_from_throughput_alone():
    v = verdict([20, 19, 17.5, 16], [signal("pmset", None, "pmset reported nothing recognisable")])
    assert (v["throttled"], v["os_signal"]) == (True, "unavailable")
    assert v["basis"] == ("from throughput alone: the last windows are 12.5% and 20.0% below the first; "
                          "no OS thermal signal")
    assert (v["drop_pct"], v["drop_pct_tail"]) == (20.0, 14.1)  # (19.5 - 16.75) / 19.5
    v = verdict([10, 9.5, 8])  # one of the last two windows is within 10% of the first
    assert (v["throttled"], v["basis"]) == (None, "no OS thermal signal; throughput fell 20.0%")
    v = verdict([10, 10.4])
    assert (v["throttled"], v["basis"], v["drop_pct"]) == (None, "no OS thermal signal; throughput rose 4.0%", -4.0)
    assert "drop_pct_tail" not in v
    assert verdict([10, 8.5])["throttled"] is True
    assert verdict([10, 9.5, 9.5], drop_threshold=0.05)["throttled"] is True


def test_verdict_is_json_and_rejects_empty_first_window():
    json.dumps(verdict([5, 4, 3, 2], [signal("nvml", True, "hw_thermal_slowdown")]))
    with pytest.raises(ValueError, match="first window has no throughput"):
        verdict([0, 4])


def test_fixtures_are_plain_text():
    for path in FIX.rglob("*"):
        if path.is_file():
            path.read_text(encoding="ascii")
