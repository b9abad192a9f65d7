"""A sweep's finished runs, recorded in the repository so that a study can span machines and sessions.

A long sweep (the learned-PRM study is about a day of CPU time) outlives the machine it started on; its run
folders (checkpoints, hundreds of MB) do not travel, but what the report and the claims read from a run does:
its per-iteration metrics, its summary and what it wrote. A sweep file's ``record: FOLDER`` makes the sweep write
one ``FOLDER/METHOD_seedK.json`` for every finished run and treat a recorded run as finished, so a fresh clone
continues with the runs nobody has recorded yet and reports over all of them.

A record holds::

    method, seed        the run's place in the sweep
    config              its flat config without the machine-local paths (COMPARED_WITHOUT)
    fingerprints        sha256 (first 16 hex digits) of the starting policy's and the learned PRM's weights:
                        two machines rebuild them from the same recipe and seed but not bit for bit (their CPU
                        kernels round differently), so a reader sees which runs shared a policy and a PRM
    machine, wall_seconds
    series              every metric the sweep reads, one value per logged iteration (NaN as null)
    summary             the run's summary.json
    samples             what it wrote at its first, middle and last sampled iteration (SAMPLED_RESPONSES each)

A record whose config differs from the sweep's is an error naming the keys, never silently reused.

A sweep that builds a learned PRM also records what its PRM stage measured, in ``FOLDER/prm_FINGERPRINT.json``
(one per PRM: a sibling PRM rebuilt on another machine gets its own)::

    fingerprint, machine
    train               model/prm_train.json (held-out step metrics before and after training)
    best_of_n           best_of_n/best_of_n.json without its per-sample scores (the table, the pair accuracy)
    hackability         hackability.json (what the PRM pays for steps that do no work; claims.py's H1 reads it)
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

COMPARED_WITHOUT = ("policy.model", "env.prm_model")  # absolute paths into one machine's run folder
SAMPLED_RESPONSES = 8  # per recorded iteration: enough to read the mechanism, small enough to commit


def record_path(folder: Path, method: str, seed: int) -> Path:
    return Path(folder) / f"{method}_seed{seed}.json"


def comparable_config(flat: dict) -> dict:
    """A run's flat config as two machines can compare it: without the keys that are local paths."""
    return {k: v for k, v in flat.items() if k not in COMPARED_WITHOUT}


def weights_digest(folder: str | Path) -> str | None:
    """sha256 (first 16 hex digits) of a model folder's weight files; None if it holds none."""
    files = sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def sampled_iterations(records: list[dict]) -> list[dict]:
    """The first ``SAMPLED_RESPONSES`` responses of the first, middle and last sampled iteration."""
    from pure_rl.samples import start_middle_end  # tensordict-importing; records are read without it

    kept = []
    for it in start_middle_end(records):
        kept += [r for r in records if r["iteration"] == it][:SAMPLED_RESPONSES]
    return kept


def write_record(folder: Path, method: str, seed: int, **fields) -> Path:
    """Write ``folder/METHOD_seedK.json`` from ``fields`` (the keys of the module docstring)."""
    path = record_path(folder, method, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    series = {k: [_json_number(x) for x in v] for k, v in fields.pop("series").items()}
    record = {"method": method, "seed": seed, **fields, "series": series}
    path.write_text(json.dumps(record, default=float) + "\n")
    return path


def _json_number(x: float) -> float | None:
    """NaN as null (JSON has no NaN); 7 significant digits, far below any difference the report shows."""
    x = float(x)
    return None if math.isnan(x) else float(f"{x:.7g}")


def read_record(path: Path) -> dict:
    """A record with its series as floats again (null -> NaN)."""
    record = json.loads(Path(path).read_text())
    record["series"] = {k: [math.nan if x is None else x for x in v] for k, v in record["series"].items()}
    return record


def record_differences(record: dict, flat: dict) -> list[str]:
    """The config keys where a record differs from the run the sweep would launch now."""
    have, want = record["config"], comparable_config(flat)
    keys = sorted(set(have) | set(want))
    return [f"{k}: {have.get(k)!r} (record) vs {want.get(k)!r} (sweep)" for k in keys if have.get(k) != want.get(k)]


def prm_record_path(folder: Path, fingerprint: str) -> Path:
    """Where the PRM stage of the PRM with this weights fingerprint is recorded."""
    return Path(folder) / f"prm_{fingerprint}.json"


def write_prm_record(
    folder: Path, fingerprint: str, machine: str, train: dict, best_of_n: dict, hackability: dict
) -> Path:
    """Write ``folder/prm_FINGERPRINT.json`` (see the module docstring); returns its path."""
    path = prm_record_path(folder, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    best_of_n = {k: v for k, v in best_of_n.items() if k != "samples"}  # 1.6 MB of per-sample scores stay local
    record = {"fingerprint": fingerprint, "machine": machine, "train": train, "best_of_n": best_of_n}
    path.write_text(json.dumps({**record, "hackability": hackability}, indent=2) + "\n")
    return path
