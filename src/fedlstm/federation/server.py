"""What the coordinating server does, with no Flower in sight (the ServerApp only forwards).

It merges the sites' preprocessing statistics, initialises the global model, records per-round
metrics, checkpoints the global model every round and, after the last round, turns it into the
detector of its kind (for some kinds by asking the sites aggregate-only questions). Test-set
curves are for reporting only: nothing here selects a round, model or threshold on them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fedlstm.data.readers import Records
from fedlstm.data.spec import DatasetSpec
from fedlstm.features import FlowPreprocessor, PreprocessingStats, merge_all
from fedlstm.features.stats import DP_BINS, dp_histogram_from_bytes, read_agreed
from fedlstm.federation.attacks import (
    apply_trigger,
    default_trigger,
    malicious_sites,
    parse_attack,
)
from fedlstm.federation.audit import Ledger, ReplyContract
from fedlstm.federation.client import PREPROCESSING, REPLY_METRICS
from fedlstm.federation.codec import parse
from fedlstm.federation.robust import ROBUST_STRATEGIES, check_robust
from fedlstm.models import get_weights, set_weights
from fedlstm.runs.rundir import unseen_attack_recall
from fedlstm.tasks import Task
from fedlstm.tasks.base import Ask, Check, make_preprocessor, npz_check, windows_of
from fedlstm.training import privacy
from fedlstm.training.objectives import evaluate_loss

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/last.pt"


def sampled_clients(fed) -> int:
    """Clients Flower samples per round: fraction_fit of all, at least min_fit_clients."""
    return max(min(fed.min_fit_clients, fed.clients), int(fed.fraction_fit * fed.clients))


class NoSiteTrained(RuntimeError):
    """Every site asked to train in a round failed or did not answer."""


class ServerTask:
    def __init__(self, task: Task, spec: DatasetSpec, tests: dict[str, Records] | None = None,
                 out_dir: str | Path | None = None):
        if not task.federated:
            raise ValueError(f"a {task.kind} detector ({task.cfg.model.name}) cannot be trained "
                             "by federated averaging; use an LSTM, RNN or CNN")
        self.task, self.cfg, self.spec = task, task.cfg, spec
        self.tests = tests or {}
        self.out_dir = Path(out_dir) if out_dir else None
        self.classes = task.class_names(spec)
        self.preprocessor: FlowPreprocessor | None = None
        self.rounds: dict[int, dict] = {}
        self.round_offset = 0  # rounds already done before a resume
        self.last_round = 0  # last round (of this session) whose global model was evaluated
        self.round_times: dict[int, float] = {}  # perf_counter when each round's model arrived
        # Set to False/True (keep float arrays) before a run to get the GuardedGrid with its
        # record of every message here after it.
        self.audit = None
        self.stop = threading.Event()  # set (e.g. on Ctrl-C) to end the run at the next poll
        self.ledger = Ledger()  # bytes on the wire, counted by the grid every message goes through
        self.weights: list[np.ndarray] | None = None
        self.statistics_received: list[dict] = []
        self.answers_received: list[dict] = []  # phase, client, keys and sizes: the audit trail
        self.histogram_bins = 0  # set by kinds that ask for score histograms
        self.calibration_check: dict | None = None  # what robust calibration did, if it ran
        self.defences = None  # the strategy with its defence wrappers (set by the ServerApp)
        fed = self.cfg.federation
        self.attack = parse_attack(fed.attack) if fed.attack else None  # simulated, for reports
        if fed.strategy in ROBUST_STRATEGIES:  # fail before any site is asked anything
            tolerated = int(fed.tolerate * fed.clients)
            if tolerated == 0 and fed.tolerate > 0:  # it silently averaged as FedAvg does
                raise ValueError(
                    f"{fed.strategy} is sized for federation.tolerate = {fed.tolerate:.0%} "
                    f"malicious sites, and {fed.tolerate:.0%} of {fed.clients} sites is none: it "
                    f"would tolerate no malicious site; use at least "
                    f"{math.ceil(1 / fed.tolerate - 1e-9)} sites, or fedavg")
            check_robust(fed.strategy, tolerated, sampled_clients(fed))
        self.result = None  # the detector, once the federation has finished
        self.failure: str | None = None  # why the run stopped, when it did
        self._test_windows = None

    # -- before round 1 -------------------------------------------------------------------------
    def prepare_preprocessing(self, ask: Ask) -> FlowPreprocessor:
        """The federation's preprocessing, by `federation.preprocessing`: merged statistics
        (federated, local), the agreed file alone (agreed: no site is asked anything), or noisy
        histograms and the agreed categories (dp)."""
        mode = self.cfg.federation.preprocessing
        if mode == "agreed":
            return self.use_agreed()
        answers = ask({"phase": PREPROCESSING})
        if mode == "dp":
            return self.merge_dp_histograms([dp_histogram_from_bytes(a["dp_histogram"])
                                             for a in answers])
        return self.merge_statistics([PreprocessingStats.from_bytes(bytes(a["statistics"]))
                                      for a in answers])

    def preprocessor_message(self) -> dict:
        """What every message to a site carries of the preprocessing: the merged preprocessor,
        or, under `local`, nothing (the other sites' extremes and categories never reach a site;
        each transforms with its own statistics)."""
        if self.cfg.federation.preprocessing == "local" or self.preprocessor is None:
            return {}
        return {"preprocessor": json.dumps(self.preprocessor.to_dict())}

    def merge_statistics(self, parts: list[PreprocessingStats]) -> FlowPreprocessor:
        self.statistics_received = [{"count": p.count} for p in parts]
        self.preprocessor = make_preprocessor(self.spec, self.cfg).fit_stats(merge_all(parts))
        return self.preprocessor

    def _agreed(self) -> dict:
        path = self.cfg.federation.preprocessing_file
        if not path:
            raise ValueError(f"federation.preprocessing={self.cfg.federation.preprocessing} "
                             "needs federation.preprocessing_file (ranges and categories)")
        return read_agreed(path)

    def use_agreed(self) -> FlowPreprocessor:
        agreed = self._agreed()
        pre = make_preprocessor(self.spec, self.cfg)
        if self.cfg.federation.secagg and "max_site_records" not in agreed:
            raise ValueError("SecAgg+ weighs updates by a bound of the sites' record counts, "
                             "which agreed preprocessing never receives: add max_site_records "
                             f"to {self.cfg.federation.preprocessing_file}")
        bound = agreed.get("max_site_records")
        self.statistics_received = [{"count": int(bound)}] if bound else []
        self.preprocessor = pre.fit_stats(PreprocessingStats.agreed(
            pre.numeric_columns, pre.categorical_columns, agreed.get("ranges", {}),
            agreed["categories"]))
        return self.preprocessor

    def merge_dp_histograms(self, answers: list[tuple[np.ndarray, float]]) -> FlowPreprocessor:
        """Ranges from the sum of the sites' noisy histograms: a bin counts as holding values
        when its merged count exceeds 4 standard deviations of the merged noise (noise alone
        passes that in about one of 30,000 bins)."""
        if not answers:
            raise ValueError("no site answered the preprocessing question")
        pre = make_preprocessor(self.spec, self.cfg)
        total = sum(h for h, _ in answers)
        noise = float(np.sqrt(sum(sigma ** 2 for _, sigma in answers)))
        # A site's record count, bounded from above from its noisy counts (SecAgg+'s weights).
        self.statistics_received = [
            {"count": int(max(h[0].sum(), 0) + 4 * sigma * np.sqrt(DP_BINS))} for h, sigma in answers]
        self.preprocessor = pre.fit_stats(PreprocessingStats.from_dp_histogram(
            pre.numeric_columns, total, 4 * noise, self._agreed()["categories"]))
        return self.preprocessor

    # -- what sites may answer ------------------------------------------------------------------
    def declared_answers(self) -> dict[str, dict[str, Check]]:
        """The aggregate questions this server asks, and the layout of each answer."""
        pre = make_preprocessor(self.spec, self.cfg)

        def statistics(data: object) -> str | None:
            try:
                stats = PreprocessingStats.from_bytes(bytes(data))
            except (ValueError, KeyError, OSError, TypeError) as exc:
                return f"not preprocessing statistics ({exc})"
            return stats.layout_error(pre.numeric_columns, pre.categorical_columns)

        dp_histogram = npz_check({"histogram": ((len(pre.numeric_columns), DP_BINS), "f"),
                                  "sigma": ((), "f")})
        # Under `agreed` no site is asked, so no answer is declared: one would stop the run.
        first = {"federated": {"statistics": statistics}, "local": {"statistics": statistics},
                 "dp": {"dp_histogram": dp_histogram}}.get(self.cfg.federation.preprocessing)
        return {**({PREPROCESSING: first} if first else {}), **self.task.declared_answers(self)}

    def reply_contract(self) -> ReplyContract:
        shapes = tuple(tuple(np.shape(w)) for w in self.weights) if self.weights is not None else ()
        return ReplyContract(shapes, REPLY_METRICS, self.declared_answers(),
                             max_sites=max(self.cfg.federation.clients, 2),
                             codec=parse(self.cfg.federation.compress))

    def receive(self, phase: str, answers: list[dict]) -> None:
        self.answers_received += [{"phase": phase, "client": str(a.get("client", "?")),
                                   "keys": sorted(a), "bytes": sum(len(v) for v in a.values()
                                                                   if isinstance(v, bytes))}
                                  for a in answers]

    def initial_weights(self) -> list[np.ndarray]:
        resumed = self.load_checkpoint()
        if resumed is not None:
            return resumed
        self.weights = get_weights(self.task.new_model(self.preprocessor.n_features_out,
                                                       len(self.classes)))
        return self.weights

    @property
    def remaining_rounds(self) -> int:
        return max(self.cfg.federation.rounds - self.round_offset, 0)

    # -- every round ----------------------------------------------------------------------------
    def round_record(self, server_round: int) -> dict:
        return self.rounds.setdefault(server_round + self.round_offset,
                                      {"round": server_round + self.round_offset})

    def record_fit(self, server_round: int, results: list[tuple[int, dict]]) -> dict:
        n = sum(k for k, _ in results)
        agg = {key: sum(k * m[key] for k, m in results) / n
               for key in ("train_loss", "train_accuracy") if all(key in m for _, m in results)}
        if any("epsilon" in m for _, m in results):  # record-level DP: the weakest site counts
            agg["epsilon"] = max(m["epsilon"] for _, m in results)
        rec = self.round_record(server_round)
        rec.update(agg)
        fit = self.ledger.take("train")  # this round's training messages, all stages
        if fit["down"] or fit["up"]:  # (the in-process engine sends no messages)
            rec["bytes_down"], rec["bytes_up"] = fit["down"], fit["up"]
        failed = self.ledger.take_failures("train")
        if failed:  # sites whose training failed this round: left out, named
            rec["clients_failed"] = failed
        rec.update(self.defence_record())
        keep = ("train_loss", "train_accuracy", "epsilon", "delta", "local_epochs")
        rec["clients_fit"] = {m.get("client", str(i)): {"n": k, **{x: m[x] for x in keep if x in m}}
                              for i, (k, m) in enumerate(results)}
        return agg

    def _require_training(self, server_round: int) -> None:
        """A round in which no update was aggregated because every site asked to train failed
        or did not answer stops the run: going on would release the previous model as if it had
        been trained (and a run whose every round failed would end with an untrained detector
        and exit 0)."""
        rec = self.round_record(server_round)
        if "clients_fit" in rec:
            return
        failed = self.ledger.take_failures("train")
        if not failed:
            return
        rec["clients_failed"] = failed
        reasons = "; ".join(f"{name}: {why}" for name, why in failed.items())
        self.failure = (f"round {rec['round']}: every site asked to train failed or did not "
                        f"answer, so nothing was aggregated and the run stops (earlier rounds "
                        f"are in the checkpoint). {reasons}")
        raise NoSiteTrained(self.failure)

    def defence_record(self) -> dict:
        """What the defences around the aggregation did this round, with sites by name."""
        out, layer = {}, self.defences
        while hasattr(layer, "summary"):
            out.update(layer.summary(self.ledger.name))
            layer = layer.strategy
        return out

    def record_evaluate(self, server_round: int, results: list[tuple[int, dict]]) -> dict:
        evaluation = self.ledger.take("evaluate")
        if evaluation["down"] or evaluation["up"]:
            rec = self.round_record(server_round)
            rec["eval_bytes_down"], rec["eval_bytes_up"] = evaluation["down"], evaluation["up"]
        results = [(k, m) for k, m in results if k > 0]
        n = sum(k for k, _ in results)
        if not n:
            return {}
        keys = [key for key in ("val_loss", "val_accuracy") if all(key in m for _, m in results)]
        agg = {key: sum(k * m[key] for k, m in results) / n for key in keys}
        rec = self.round_record(server_round)
        rec.update(agg)
        rec["clients_val"] = {m.get("client", str(i)): {"n": k, **{x: m[x] for x in keys}}
                              for i, (k, m) in enumerate(results)}
        return agg

    def on_global_model(self, server_round: int, weights: list[np.ndarray]) -> tuple[float, dict]:
        """Called with the aggregated (released) model after every round; round 0 = initial."""
        self.weights = [np.asarray(w) for w in weights]
        self.round_times[server_round + self.round_offset] = time.perf_counter()
        if server_round > 0:
            self._require_training(server_round)
            fed = self.cfg.federation
            if fed.client_dp:
                done = server_round + self.round_offset
                self.round_record(server_round)["client_level_epsilon"] = privacy.epsilon(
                    sampled_clients(fed) / fed.clients, fed.client_dp_noise, done,
                    fed.client_dp_delta)
            self.save_checkpoint(server_round + self.round_offset)
        if not (self.task.test_curves and self.cfg.federation.server_test_curves and self.tests):
            return 0.0, {}
        model = self.model()
        torch.set_num_threads(self.cfg.train.threads)
        rec = self.round_record(server_round)
        out = {}
        for name, data in self.test_windows().items():
            r = evaluate_loss(model, data, torch.nn.CrossEntropyLoss())
            out[f"test_loss/{name}"], out[f"test_accuracy/{name}"] = r["loss"], r["accuracy"]
        rec.update(out)
        first = next(iter(self.test_windows()))
        return out[f"test_loss/{first}"], out

    def test_windows(self):
        if self._test_windows is None:
            self._test_windows = {name: windows_of(recs, self.preprocessor, self.cfg, self.classes)
                                  for name, recs in self.tests.items()}
        return self._test_windows

    # -- state ----------------------------------------------------------------------------------
    def model(self) -> torch.nn.Module:
        model = self.task.new_model(self.preprocessor.n_features_out, len(self.classes))
        set_weights(model, self.weights)
        return model

    def save_checkpoint(self, done_rounds: int) -> None:
        if self.out_dir is None:
            return
        path = self.out_dir / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"round": done_rounds, "weights": [torch.as_tensor(w) for w in self.weights],
                    "preprocessor": self.preprocessor.to_dict() if self.preprocessor else None,
                    "rounds": json.dumps(self.rounds),
                    "config": self.cfg.model_dump_json()}, tmp)
        tmp.replace(path)  # a crash mid-write never corrupts the last good checkpoint

    def load_checkpoint(self) -> list[np.ndarray] | None:
        path = self.out_dir / CHECKPOINT if self.out_dir else None
        if path is None or not path.exists():
            return None
        state = torch.load(path, weights_only=True)
        if "config" in state:  # what changed, by name (it blamed the preprocessing statistics)
            changed = _changed_settings(json.loads(state["config"]),
                                        json.loads(self.cfg.model_dump_json()))
            if changed:
                raise ValueError(f"{path}: the checkpoint was trained with other settings "
                                 f"({', '.join(changed)}); resume with the same ones, or start "
                                 "a new run")
        if state["preprocessor"] != (self.preprocessor.to_dict() if self.preprocessor else None):
            raise ValueError(f"{path}: checkpoint was trained with other preprocessing statistics; "
                             "start a new run instead of resuming")
        self.round_offset = int(state["round"])
        self.rounds = {int(k): v for k, v in json.loads(state["rounds"]).items()}
        self.weights = [t.numpy() for t in state["weights"]]
        log.info("resuming after round %d", self.round_offset)
        return self.weights

    def results(self, train_attacks: np.ndarray, partitions: list | None, notes: dict,
                timings: dict) -> tuple[dict, dict]:
        """The finished federation's evaluations on the held-out test sets (reporting only), and
        the rest of its metrics.json."""
        t = time.perf_counter()
        evaluations = {name: self.task.evaluate(self.result, recs, train_attacks)
                       for name, recs in self.tests.items()}
        timings["evaluate_seconds"] = time.perf_counter() - t
        attack = self.attack_summary(partitions, train_attacks, evaluations)
        extra = {"federation": self.cfg.federation.model_dump(), "partitions": partitions,
                 "data_notes": notes, "rounds": [self.rounds[k] for k in sorted(self.rounds)],
                 "unseen_attacks": unseen_attack_recall(train_attacks, self.spec, evaluations),
                 "answers_received": self.answers_received, "timings": timings,
                 "traffic_bytes": dict(sorted(self.ledger.totals.items())),
                 **({"resumed_after_round": self.round_offset} if self.round_offset else {}),
                 **({"calibration_check": self.calibration_check}
                    if self.calibration_check is not None else {}),
                 **({"attack": attack} if attack else {})}
        return evaluations, extra

    def attack_summary(self, partitions: list | None, train_attacks: np.ndarray,
                       evaluations: dict) -> dict | None:
        """A simulated attack: which sites were malicious and, for a backdoor, on each test set
        its success rate: of the attack records the detector flags, the share that the trigger
        lets through (and the share of all attack records let through with the trigger)."""
        if self.attack is None:
            return None
        fed = self.cfg.federation
        names = [p["client"] for p in partitions] if partitions else []
        sites = malicious_sites(fed)
        out = {"kind": str(self.attack), "malicious_share": fed.malicious,
               "malicious_sites": [names[i] if i < len(names) else f"client-{i}" for i in sites]}
        if self.attack.kind != "backdoor":
            return out
        out["backdoor"] = {}
        threshold = self.result.threshold_
        for name, recs in self.tests.items():
            trigger = default_trigger(recs.frame)
            clean = evaluations[name]["_curve"]
            triggered = self.task.evaluate(self.result, apply_trigger(recs, trigger),
                                           train_attacks)["_curve"]
            attack = np.asarray(clean["y"]) == 1
            caught = attack & (np.asarray(clean["score"]) >= threshold)
            passed = np.asarray(triggered["score"]) < threshold
            out["backdoor"][name] = {
                "trigger": trigger,
                "attack_success_rate": float(passed[caught].mean()) if caught.any() else None,
                "missed_with_trigger": float(passed[attack].mean()) if attack.any() else None,
                "missed_without_trigger": float((~caught[attack]).mean()) if attack.any()
                else None}
        return out

    def detector(self, ask: Ask | None = None, mode: str = "federated"):
        """The finished federation's detector (its kind may ask the sites to calibrate it)."""
        if self.weights is None or not self.rounds:
            raise RuntimeError("the federation finished without producing a model; see the log")
        return self.task.federated_detector(self, ask, mode)


# A resumed run may wait longer for its sites; every other setting shapes what it trains.
_RESUMABLE = {"federation.round_timeout"}


def _changed_settings(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ (`_RESUMABLE` ones aside), with both values."""
    out = []
    for key in sorted(set(saved) | set(now)):
        name, a, b = f"{prefix}{key}", saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_settings(a, b, f"{name}.")
        elif a != b and name not in _RESUMABLE:
            out.append(f"{name}: {a!r} then, {b!r} now")
    return out
