"""Typed run configuration. Every run writes the configuration it resolved next to its results."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class DataConfig(_Strict):
    dataset: str = "nsl-kdd"
    # Bring-your-own flow logs: a schema (zeek-conn, cicflowmeter or a .toml file) and files.
    schema_: str | None = Field(None, alias="schema")
    train_files: list[str] = []
    # Sites of different schemas (federate, partition `files`): one schema per training file.
    site_schemas: list[str] = []
    test_file: str | None = None  # without it, random-split (or time-split) of the training files
    # Benchmarks: official or random-split. Your own files without a test file: random-split
    # (the default for them) or time-split (test on the latest records, as deployment would).
    protocol: Literal["official", "random-split", "time-split"] = "official"
    data_dir: str | None = None  # falls back to $FEDLSTM_DATA
    split_file: str | None = None  # random-split: role of the file to split (default: first present)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # random-split and time-split only
    val_fraction: float = Field(0.1, gt=0, lt=1)  # always carved from training data
    dedup: bool = False  # drop exact duplicate records before splitting
    lenient: bool = False  # skip (and report) malformed lines instead of failing
    # Flow files (--train-file, --test-file, a site's file): a file none of whose lines parse, or
    # (with `lenient`) with more than this share of malformed lines, stops the run, as
    # `detect --max-bad-share` does. None: the schema file's `max_bad_share`, else 0.5.
    max_bad_share: float | None = Field(None, ge=0, le=1)
    max_train_rows: int | None = Field(None, ge=1)  # stratified subsample of the training part
    max_test_rows: int | None = Field(None, ge=1)  # stratified subsample of each test set (quick)

    @model_validator(mode="after")
    def _test_file_of_own_files(self) -> DataConfig:
        if self.test_file and not self.train_files:  # it was ignored: the benchmark ran instead
            raise ValueError("test_file (--test-file) scores a model trained on your own files: "
                             "give them with train_files (--train-file); to score a bundle on "
                             "a file, `fedlstm evaluate BUNDLE --test-file FILE`")
        return self

    @property
    def spec_name(self) -> str:
        """The schema records are read with: a bring-your-own schema, else the dataset's."""
        return self.schema_ or self.dataset


class PreprocessConfig(_Strict):
    feature_range: tuple[float, float] = (0.0, 1.0)
    outliers: Literal["none", "log", "clip", "log+clip"] = "log"
    log_threshold: float = 100.0
    clip_quantile: float = Field(0.999, gt=0, le=1)

    @field_validator("feature_range")
    @classmethod
    def _increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:  # [1, 0] trained on inverted scaling without a word
            raise ValueError(f"feature_range must be [min, max] with min < max, got {list(value)}")
        return value


class WindowConfig(_Strict):
    window: int = Field(8, ge=1)
    stride: int = Field(1, ge=1)  # for training windows; evaluation scores every record


class ModelConfig(_Strict):
    name: str = "lstm"
    task: Literal["binary", "family"] = "binary"
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    class_weights: Literal["none", "balanced"] = "none"
    patience: int | None = 3  # early stopping on validation loss; None disables
    # At least this many batches in all (more epochs when an epoch has few), early stopping still
    # applies; 0: `epochs` alone; a federated site takes them over the planned rounds. A few
    # thousand flows are a few batches an epoch: on the CIC-IDS2017 sample 10 epochs left a
    # model that flagged 78-100% of normal validation flows.
    min_steps: int = Field(0, ge=0)
    threads: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    proximal_mu: float = Field(0.0, ge=0)  # FedProx's proximal term; 0 = plain training
    threshold: Literal["fixed", "val-f1"] = "fixed"  # attack-probability threshold policy
    fixed_threshold: float = Field(0.5, ge=0, le=1)  # a probability
    # Record-level DP-SGD (Poisson sampling, per-sample clipping, Gaussian noise, RDP accounting).
    # The unit is one flow record: ε bounds what the model reveals about any single flow.
    dp: bool = False
    dp_max_grad_norm: float = Field(1.0, gt=0)
    dp_noise_multiplier: float = Field(1.0, ge=0)  # used when no target epsilon is given
    dp_target_epsilon: float | None = Field(None, gt=0)  # calibrates the noise over the plan
    dp_delta: float | None = Field(None, gt=0, lt=1)  # default 1/(10 n), n = training records
    # DP-SGD training windows: "overlapping" (windows.stride; a record inside k windows is
    # accounted as a group of k) or "disjoint" (stride W: each record in one window). At the same
    # ε per flow, overlapping windows gave the better models (benchmarks/dp_per_flow.py).
    dp_windows: Literal["disjoint", "overlapping"] = "overlapping"
    dp_seeded_noise: bool = False  # True: sampling and noise from the run seed (reproducible,
    # but whoever knows the seed, e.g. the server that sends it, can remove the noise)


COMPRESS_FORMS = re.compile(r"^(none|q8|topk:(?P<ratio>[0-9.e-]+)(\+q8)?)$")


def compression_spec(spec: str) -> str:
    """`--compress` in its normal form (lower case); a ValueError naming the accepted forms."""
    text = spec.strip().lower()
    match = COMPRESS_FORMS.match(text)
    try:
        ok = match is not None and (match["ratio"] is None or 0 < float(match["ratio"]) <= 1)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--compress {spec!r}: expected none, q8, topk:RATIO or topk:RATIO+q8 "
                         "with 0 < RATIO <= 1 (e.g. topk:0.05+q8)")
    return text


class FederationConfig(_Strict):
    clients: int = Field(5, ge=1)
    partition: str = "iid"  # iid | dirichlet:ALPHA | by:COLUMN | networks | files
    networks: list[str] = ["nsl-kdd", "kdd99"]  # datasets, one client each (any schemas)
    # How sites of different schemas share one model (fedlstm.federation.networks): shared (one
    # schema, one plain model), encoders (a private input encoder per site, a shared LSTM body),
    # harmonised (the common flow vocabulary through a shared layer, the rest through the
    # site's encoder); auto: shared when every site has the same columns, else encoders.
    inputs: Literal["auto", "shared", "encoders", "harmonised"] = "auto"
    shared_dim: int = Field(32, ge=1)  # width of the shared space the encoders map into
    # Personalisation: epochs each site trains the final model on its own data before it
    # calibrates its detector (0: the federated model as it is).
    finetune_epochs: int = Field(0, ge=0)
    # Federations across schemas: epochs each site trains its private encoder, the shared body
    # frozen, against the final model before it calibrates its detector (0: none; early stopping
    # on its validation windows). Its encoder was last trained beside the body it sent, not the
    # average it got back. 15 had the best validation accuracy of 0, 5, 15 (docs/networks.md).
    align_epochs: int = Field(15, ge=0)
    # Federations across schemas: epochs and learning rate of each site's private head of its
    # own attack families, trained on the frozen final model (0 epochs: no site head; alerts
    # name shared families). Chosen on the sites' validation macro-F1 (docs/networks.md).
    site_head_epochs: int = Field(40, ge=0)
    site_head_lr: float = Field(0.03, gt=0)
    # fedavg | fedprox | fedadam, or a Byzantine-robust rule (fedlstm.federation.robust) that
    # tolerates `tolerate` x clients malicious sites: krum | multikrum | bulyan | median |
    # trimmed-mean.
    strategy: Literal["fedavg", "fedprox", "fedadam", "krum", "multikrum", "bulyan", "median",
                      "trimmed-mean"] = "fedavg"
    tolerate: float = Field(0.3, ge=0, lt=0.5)  # share of sites robust rules are sized for
    # Wrappers around any strategy: norm-bound (clip each update to `norm_bound`, or adaptively
    # to norm_multiplier x the round's median norm), cap-counts (no site weighs more than 2x the
    # median count), reputation (sites that keep sending outlying updates lose their weight),
    # robust-calibration (the detector's normal-traffic statistics leave out sites whose
    # statistics disagree with the majority's: label flippers).
    defences: list[Literal["norm-bound", "cap-counts", "reputation", "robust-calibration"]] = []
    norm_bound: float | None = Field(None, gt=0)
    norm_multiplier: float = Field(2.0, gt=0)
    # Simulated attack (fedlstm.federation.attacks): `malicious` x clients sites (seeded) run
    # label-flip | sign-flip | scale:K | noise[:SIGMA] | backdoor[:SHARE] | free-rider.
    attack: str | None = None
    malicious: float = Field(0.0, ge=0, lt=1)
    attack_seed: int = 0  # which sites are malicious
    rounds: int = Field(10, ge=1)
    local_epochs: int = Field(1, ge=1)
    fraction_fit: float = Field(1.0, gt=0, le=1)  # share of clients sampled per round (S_t)
    min_fit_clients: int = Field(2, ge=1)
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 0.01  # FedAdam's eta
    # What sites send for the shared preprocessing before round 1 (docs/privacy.md: what peers
    # receive in each): federated (exact statistics, merged and broadcast), local (statistics to
    # the server only; each site transforms with its own), agreed (ranges and categories from
    # `preprocessing_file`; sites send nothing), dp (min/max from noisy histograms, part of each
    # site's ε; categories from `preprocessing_file`).
    preprocessing: Literal["federated", "local", "agreed", "dp"] = "federated"
    preprocessing_file: str | None = None  # agreed: JSON/TOML with ranges and categories
    preprocessing_epsilon: float = Field(0.5, gt=0)  # dp: ε of each site's histogram release
    evaluate_clients: bool = True  # federated evaluation on each client's own validation split
    # Secure aggregation (Flower's SecAgg+): the server only ever sees the sum of the updates.
    secagg: bool = False
    secagg_shares: int = Field(3, ge=2)  # shares of each client's secret, >= 3 when int
    secagg_threshold: int = Field(2, ge=1)  # shares needed to reconstruct (< shares)
    # Client-level DP (Flower's client-side fixed clipping + server Gaussian noise).
    client_dp: bool = False
    client_dp_noise: float = Field(1.0, ge=0)  # noise multiplier z on the clipped updates
    client_dp_clip: float = Field(1.0, gt=0)  # L2 bound of each client's update
    client_dp_delta: float = Field(1e-5, gt=0, lt=1)
    server_test_curves: bool = True  # global model on the test set each round: reporting only
    # Longest wait for the sites' answers in one round (or one question): a site that hangs is
    # left out of that round, so one stopped site never stalls the federation. None: no limit.
    round_timeout: float | None = Field(600.0, gt=0)
    # Compression of model updates (fedlstm.federation.codec): none | q8 | topk:RATIO[+q8];
    # with error feedback on the sites (what was dropped is sent later) and, downlink, the
    # global model sent as a compressed difference to sites holding the previous one.
    compress: str = "none"
    compress_feedback: bool = True
    compress_downlink: bool = True

    @field_validator("compress")
    @classmethod
    def _known_compression(cls, value: str) -> str:
        return compression_spec(value)

    @model_validator(mode="after")
    def _defences_compose(self) -> FederationConfig:
        per_update = [d for d in [self.strategy, *self.defences]
                      if d not in ("fedavg", "fedprox", "fedadam")]
        if self.secagg and per_update:
            raise ValueError(f"{', '.join(per_update)} cannot run with SecAgg+: these defences "
                             "inspect what each site sends (its update, count or calibration "
                             "answers), but under SecAgg+ the "
                             "server only sees the masked sum. What composes with SecAgg+ is "
                             "bounding on the sites: client_dp (each site clips its update "
                             "before masking, the server adds noise). Drop secagg or these "
                             "defences")
        if self.attack is not None and self.malicious == 0:
            raise ValueError(f"attack={self.attack} needs a share of malicious sites "
                             "(--malicious 0.3)")
        return self

    @model_validator(mode="after")
    def _compression_composes(self) -> FederationConfig:
        if self.compress not in ("none", "q8") and self.secagg:
            raise ValueError(f"compress={self.compress} cannot be combined with SecAgg+: the "
                             "server only sees the masked sum of what sites send, and Top-k "
                             "keeps different entries on each site, which masked sums cannot "
                             "carry. q8 composes with SecAgg+ (one shared scale per array, "
                             "quantised, then masked): use compress=q8 or none with secagg, or "
                             "drop secagg")
        return self


class AnomalyConfig(_Strict):
    """The normal-traffic detector (Mahalanobis score of a sequence model's errors)."""

    model: Literal["lstm-ae", "lstm-forecast"] = "lstm-ae"
    horizon: int = Field(1, ge=1)  # T': records the forecaster predicts (W = T + T')
    threshold: Literal["f-beta", "fpr"] = "f-beta"  # f-beta needs labelled validation anomalies
    beta: float = Field(0.5, gt=0)  # < 1 favours precision (Malhotra et al.)
    target_fpr: float = Field(0.01, gt=0, lt=1)  # label-free policy
    min_shrinkage: float = Field(1e-3, ge=0, le=1)
    score_bins: int = Field(2000, ge=3)
    threshold_share: float = Field(0.5, gt=0, lt=1)  # of validation records, for choosing ζ
    report_fpr: float = Field(0.01, gt=0, lt=1)  # "recall at X% FPR" in evaluations
    # The hybrid detector: the share of normal validation traffic its anomaly part may flag.
    alert_budget: float = Field(0.05, gt=0, lt=1)


# The detector kinds (fedlstm.tasks): a supervised classifier (an LSTM, RNN, CNN, or with a
# classical model name a scikit-learn baseline), a model of normal traffic (anomaly), or both in
# one network (hybrid: known attacks and novelty).
Detector = Literal["supervised", "anomaly", "hybrid"]


class RunConfig(_Strict):
    seed: int = 0
    detector: Detector = "supervised"
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    windows: WindowConfig = WindowConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    federation: FederationConfig = FederationConfig()
    anomaly: AnomalyConfig = AnomalyConfig()

    @model_validator(mode="after")
    def _calibration_to_check(self) -> RunConfig:
        if "robust-calibration" in self.federation.defences and self.detector == "supervised":
            raise ValueError("robust-calibration checks the sites' answers when the novelty part "
                             "is calibrated; the supervised detector has none: use detector "
                             "hybrid (the default of the CLI) or anomaly, or drop the defence")
        if self.train.dp and self.detector != "supervised":  # every site failed, after start-up
            raise ValueError(f"DP-SGD (train.dp, --dp) trains the supervised LSTM only; the "
                             f"{self.detector} detector has no DP training: use detector "
                             "supervised (--dp's default), or drop --dp")
        return self


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--set train.epochs=3 model.hidden_size=32`: dotted keys, JSON values (bare text = string)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        node = data
        *parents, leaf = key.strip().split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # `seed.x=1`, or `train=3` then `train.lr=0.1`
                raise ValueError(f"{item.strip()}: {'.'.join(parents[:i + 1])} is a value, not "
                                 "a section with keys")
        node[leaf] = _parse_value(value.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                **top: Any) -> RunConfig:
    return RunConfig.model_validate(raw_config(path, overrides, **top))


# Settings chosen per benchmark dataset: the window length by how its rows are ordered (NSL-KDD's
# are shuffled; KDD99 is in capture order; UNSW-NB15's partitions are sorted by class), the model
# settings by `benchmarks/tune_defaults.py` (a small search on validation data only; of the
# settings within 0.002 of the best validation score, the fastest to train), and the
# federation's rounds x local epochs so that Fed-LSTM matches centralised training of the same
# detector. A run's own settings (file, options, --set) win over these.
DATASET_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "nsl-kdd": {"windows": {"window": 1}, "model": {"hidden_size": 64, "dropout": 0.026},
                "train": {"epochs": 5, "lr": 0.00204},
                "federation": {"rounds": 5, "local_epochs": 2}},
    "kdd99": {"windows": {"window": 1}, "model": {"hidden_size": 32, "dropout": 0.278},
              "train": {"epochs": 5, "lr": 0.000367},
              "federation": {"rounds": 5, "local_epochs": 2}},
    "unsw-nb15": {"windows": {"window": 8}, "model": {"hidden_size": 128, "dropout": 0.031},
                  "train": {"epochs": 10, "lr": 0.000435},
                  "federation": {"rounds": 10, "local_epochs": 2}},
}


# The user's own flow logs: the general defaults, and enough batches for a small log unless the
# user sets the epochs (chosen on the CIC-IDS2017 sample's validation flows, README "Small logs").
OWN_FLOW_DEFAULTS: dict[str, dict[str, Any]] = {"train": {"min_steps": 1000}}


def _fill(data: dict, defaults: dict[str, dict[str, Any]]) -> dict:
    """`data` with each `defaults` section's keys where it sets nothing."""
    for name, values in defaults.items():
        for key, value in values.items():
            data.setdefault(name, {}).setdefault(key, value)
    return data


def with_dataset_defaults(data: dict) -> dict:
    """`data` (a raw configuration) with its benchmark dataset's defaults where it sets nothing."""
    section = data.get("data", {})
    if section.get("schema") or section.get("train_files"):  # the user's own flow logs
        # an epoch count the user gives is what runs (local epochs: federations)
        given = "epochs" in data.get("train", {}) or "local_epochs" in data.get("federation", {})
        return data if given else _fill(data, OWN_FLOW_DEFAULTS)
    fed = data.get("federation", {})
    if fed.get("partition") == "networks":  # as many rounds as the slowest network needs
        networks = fed.get("networks", FederationConfig.model_fields["networks"].default)
        rounds = [DATASET_DEFAULTS.get(n, {}).get("federation", {}).get("rounds") for n in networks]
        if any(rounds):
            fed.setdefault("rounds", max(r for r in rounds if r))
            data["federation"] = fed
    return _fill(data, DATASET_DEFAULTS.get(section.get("dataset", "nsl-kdd"), {}))


def _config_file(path: Path) -> dict:
    """A TOML (.toml) or JSON configuration file; its errors name it."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); a TOML "
                         "file must end in .toml") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a configuration is a table of sections (data, model, train, "
                         f"...), not a {type(data).__name__}")
    return data


def raw_config(path: str | Path | None = None, overrides: list[str] | None = None,
               **top: Any) -> dict:
    """A config file, then `section__key=value` keywords (None = unset), then `--set` overrides,
    then the dataset's defaults where none of these set a value."""
    data: dict = {}
    if path:
        data = _config_file(Path(path))
    for dotted, value in top.items():
        if value is not None:
            apply_overrides(data, [f"{dotted.replace('__', '.')}={json.dumps(value)}"])
    apply_overrides(data, overrides or [])
    for name, field in RunConfig.model_fields.items():
        value = data.get(name)
        if isinstance(field.default, BaseModel) and value is not None and \
                not isinstance(value, dict):  # the dataset defaults below fill sections in
            raise ValueError(f"configuration: {name} is a section of settings ({name}.KEY=...), "
                             f"not {value!r}" + (f" (in {path})" if path else ""))
    return with_dataset_defaults(data)
