"""Federation across networks of different schemas (NSL-KDD, KDD99, UNSW-NB15 in one model):
the shared taxonomy, the encoder/body split, and what the server receives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedlstm.config import RunConfig
from fedlstm.data.schemas import get_spec
from fedlstm.data.taxonomy import SHARED_FAMILIES, shared_family, to_shared
from fedlstm.models.encoded import EncodedLSTM, load_weights, private_weights, shared_weights

NETWORKS = ["nsl-kdd", "kdd99", "unsw-nb15"]


@pytest.mark.parametrize("dataset", NETWORKS)
def test_every_family_of_a_benchmark_maps_into_the_shared_taxonomy(dataset):
    spec = get_spec(dataset)
    mapped = {f: shared_family(f) for f in spec.family_order}
    assert set(mapped.values()) <= set(SHARED_FAMILIES)
    assert mapped["normal"] == "normal"
    # Only the families nobody could place fall into `other` (UNSW-NB15's generic and fuzzers).
    assert {f for f, s in mapped.items() if s == "other"} <= {"generic", "fuzzers"}


@pytest.mark.parametrize("family,shared", [
    ("dos", "dos"), ("DoS", "dos"), ("DoS Hulk", "dos"), ("DDoS", "dos"), ("probe", "probe"),
    ("Reconnaissance", "probe"), ("PortScan", "probe"), ("r2l", "remote-access"),
    ("Exploits", "remote-access"), ("Web Attack - Brute Force", "remote-access"),
    ("u2r", "privilege-escalation"), ("Backdoor", "backdoor"), ("Worms", "backdoor"),
    ("Bot", "backdoor"), ("BENIGN", "normal"), ("Generic", "other"), ("never-seen", "other")])
def test_taxonomy_table(family, shared):
    assert shared_family(family) == shared


def test_taxonomy_over_arrays_keeps_order():
    out = to_shared(np.array(["r2l", "normal", "Exploits", "r2l"], dtype=object))
    assert out.tolist() == ["remote-access", "normal", "remote-access", "remote-access"]


def test_the_shared_body_does_not_depend_on_a_sites_columns():
    a, b = EncodedLSTM(122, 2, hidden_size=8, shared_dim=4), EncodedLSTM(40, 2, hidden_size=8,
                                                                         shared_dim=4)
    assert [w.shape for w in shared_weights(a)] == [w.shape for w in shared_weights(b)]
    assert [w.shape for w in private_weights(a)] == [(4, 122), (4,)]
    # b takes a's body and keeps its own encoder
    own = private_weights(b)
    load_weights(b, shared_weights(a), own)
    assert all(np.array_equal(x, y) for x, y in zip(shared_weights(a), shared_weights(b)))
    assert all(np.array_equal(x, y) for x, y in zip(private_weights(b), own))
    with pytest.raises(ValueError, match="shared arrays"):
        load_weights(b, shared_weights(a)[:-1])


def test_sliding_windows_match_the_plain_forward_pass():
    torch.manual_seed(0)
    model = EncodedLSTM(10, 3, hidden_size=8, shared_dim=4, n_common=3).eval()
    records = torch.rand(30, 10)
    ends = torch.arange(3, 30)
    windows = torch.stack([records[e - 3:e + 1] for e in ends])
    assert torch.allclose(model.forward_sliding(records, ends, 4), model(windows), atol=1e-5)


def _cfg(datasets_dir, **federation) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"data_dir": str(datasets_dir), "max_train_rows": 900, "max_test_rows": 300},
        "model": {"hidden_size": 8}, "train": {"threshold": "val-f1"},
        "federation": {"partition": "networks", "networks": NETWORKS, "rounds": 2,
                       "shared_dim": 4, "server_test_curves": False, **federation}})


@pytest.fixture(scope="module")
def three_networks(datasets_dir):
    from fedlstm.federation.sites import federated_data

    return federated_data(_cfg(datasets_dir))


def test_three_schemas_federate_and_every_site_scores_its_own_tests(datasets_dir, three_networks,
                                                                    tmp_path):
    """Flower's simulation engine: each site keeps its encoder in its node state between rounds
    (the same results as the in-process engine, whose sites are objects), and the server never
    receives an encoder weight, a statistic or anything shaped like a site's features."""
    from fedlstm.federation.apps import make_client_app, make_server_app
    from fedlstm.federation.networks import NetworkServer
    from fedlstm.federation.simulation import federate, private_shares, simulate
    from fedlstm.tasks import task_for

    data = three_networks
    assert data.specs is not None and len({tuple(s.feature_columns) for s in data.specs}) == 2
    cfg = _cfg(datasets_dir, inputs="encoders", clients=3)
    server = NetworkServer(task_for(cfg))
    server.audit = True
    with private_shares(data, data.spec) as folder:
        simulate(make_server_app(server),
                 make_client_app(str(folder), cfg, sites_out=str(tmp_path / "sites")), 3,
                 server.stop)
    reports = server.result
    assert sorted(reports) == sorted(NETWORKS)
    for name, report in reports.items():
        assert report["dataset"] == name and report["tests"]
        assert all(k.startswith(f"{name}/") for k in report["tests"])  # its own tests only
        for ev in report["tests"].values():
            assert 0.0 <= ev["binary"]["accuracy"] <= 1.0 and 0.0 <= ev["binary"]["fpr"] <= 1.0

    # The message audit: what reached the server.
    task = task_for(cfg)
    widths = {task.fit_preprocessor(spec, recs).n_features_out
              for spec, recs in zip(data.specs, data.clients)}
    shared = {tuple(w.shape) for w in server.weights}
    received = [m for m in server.audit.log if m.direction == "received"]
    assert any(m.message_type == "train" for m in received)
    for m in received:
        for _, shape, _ in m.arrays:
            assert not set(shape) & widths, m  # nothing shaped like a site's encoder input
        if m.message_type == "train":
            assert {tuple(a.shape) for a in m.float_arrays} <= shared
        if m.message_type == "get_properties":
            keys = {k.split("/")[-1] for k in m.config
                    if k.startswith("getpropertiesres.properties")}
            assert keys - {"client"} in ({"records"}, {"report"}), m

    # Each site kept its own detector: it scores its test set as the site reported, and names
    # the site's own attack families (its private head, trained after the last round).
    from fedlstm.detection.bundle import ModelBundle
    from fedlstm.tasks.base import evaluate_detector

    assert all(r["detector_saved"] for r in reports.values())
    bundle = ModelBundle.load(tmp_path / "sites" / "unsw-nb15" / "model.fedlstm")
    assert bundle.model_name == "lstm-encoded-families" and bundle.window == 8  # its own W
    assert bundle.task == "family" and bundle.class_names == get_spec("unsw-nb15").family_order
    assert "exploits" in bundle.class_names and "remote-access" not in bundle.class_names
    test = data.site_tests(data.names.index("unsw-nb15"))["unsw-nb15/test"]
    ev = evaluate_detector(bundle, test)
    reported = reports["unsw-nb15"]["tests"]["unsw-nb15/test"]
    assert ev["binary"]["accuracy"] == pytest.approx(reported["binary"]["accuracy"])
    assert ev["family"]["macro"]["f1"] == pytest.approx(reported["family"]["macro_f1"])
    assert len(bundle.model.site_head.weight) == len(bundle.class_names) - 1
    assert not {tuple(bundle.model.site_head.weight.shape)} & {
        tuple(a.shape) for m in received for a in m.float_arrays}  # it never travelled

    inprocess = federate(cfg, data, None, engine="inprocess")
    for name, report in inprocess.result.items():
        for test, ev in report["tests"].items():
            assert ev["binary"]["accuracy"] == pytest.approx(
                reports[name]["tests"][test]["binary"]["accuracy"], abs=1e-9)


def test_harmonised_inputs_federate_and_each_site_keeps_a_bundle(datasets_dir, three_networks,
                                                                  tmp_path):
    """Harmonised inputs: the common flow vocabulary in front of each site's own features. A
    site's bundle records that vocabulary and scores its test set as the site reported."""
    import json
    import zipfile

    from fedlstm.detection.bundle import BundleError, ModelBundle, _validated
    from fedlstm.features.harmonise import COMMON_FEATURES, HarmonisedPreprocessor
    from fedlstm.federation.simulation import federate
    from fedlstm.tasks.base import evaluate_detector

    data = three_networks
    server = federate(_cfg(datasets_dir, inputs="harmonised"), data, tmp_path, engine="inprocess")
    assert server.cfg.federation.inputs == "harmonised"
    assert sorted(server.result) == sorted(NETWORKS)
    assert server.rounds[2]["clients_val"].keys() == set(NETWORKS)
    assert all(r["detector_saved"] for r in server.result.values())
    path = tmp_path / "sites" / "kdd99" / "model.fedlstm"
    bundle = ModelBundle.load(path)
    assert isinstance(bundle.preprocessor, HarmonisedPreprocessor)
    assert bundle.model_params["n_common"] == len(COMMON_FEATURES)
    test = data.site_tests(data.names.index("kdd99"))["kdd99/test"]
    assert evaluate_detector(bundle, test)["binary"]["accuracy"] == pytest.approx(
        server.result["kdd99"]["tests"]["kdd99/test"]["binary"]["accuracy"])

    # a bundle made under another common vocabulary is refused, naming it
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["common_features"] = ["another", *COMMON_FEATURES[1:]]
    with pytest.raises(BundleError, match="common flow vocabulary"):
        _validated(path, manifest)  # what `ModelBundle.load` checks a manifest with


def test_sites_of_one_schema_still_share_one_plain_model(datasets_dir):
    from fedlstm.federation.sites import federated_data

    data = federated_data(_cfg(datasets_dir, networks=["nsl-kdd", "kdd99"]))
    assert data.specs is None  # the plain federation: merged preprocessing, one model


def test_networks_of_different_schemas_are_refused_one_plain_model(datasets_dir):
    from fedlstm.federation.sites import federated_data

    with pytest.raises(ValueError, match="inputs=encoders"):
        federated_data(_cfg(datasets_dir, inputs="shared"))


def test_record_level_dp_trains_across_schemas_within_its_budget(datasets_dir, three_networks):
    """DP-SGD through each site's private encoder and the shared body: every round's updates
    spend no more than the target ε per flow, and each site still builds and scores its
    detector (its alignment and head, which never leave it, train without DP)."""
    from fedlstm.federation.simulation import federate

    cfg = _cfg(datasets_dir, inputs="encoders", align_epochs=2, site_head_epochs=2)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "dp": True, "dp_target_epsilon": 3.0, "dp_seeded_noise": True})})
    server = federate(cfg, three_networks, None, engine="inprocess")
    spent = [server.rounds[r]["epsilon"] for r in (1, 2)]
    assert 0 < spent[0] < spent[1] <= 3.0 + 0.05  # one budget over the planned rounds
    assert sorted(server.result) == sorted(NETWORKS)
    for report in server.result.values():
        assert report["tests"] and all(0 <= t["binary"]["accuracy"] <= 1
                                       for t in report["tests"].values())


def test_hybrid_sites_add_their_own_normal_model_and_flag_what_either_part_flags(
        datasets_dir, three_networks, tmp_path):
    """--detector hybrid across schemas: the federation trains the supervised LSTM; each site
    adds its own autoencoder of normal traffic after the last round. A record is an alert when
    either part fires, and the site's bundle (a hybrid) scores its test set as reported."""
    from fedlstm.detection.bundle import ModelBundle
    from fedlstm.detection.hybrid import HybridDetector
    from fedlstm.federation.inprocess import run_inprocess
    from fedlstm.federation.networks import NetworkServer, NetworkSite
    from fedlstm.tasks import task_for

    data = three_networks
    cfg = _cfg(datasets_dir, inputs="encoders", clients=3, align_epochs=2, site_head_epochs=2)
    server = NetworkServer(task_for(cfg.model_copy(update={"detector": "hybrid"})))
    sites = [NetworkSite(server.task, data.clients[i], data.specs[i], name, data.site_tests(i),
                         out_dir=tmp_path / name) for i, name in enumerate(data.names)]
    run_inprocess(server, sites)
    for name, report in server.reports.items():
        for ev in report["tests"].values():
            known, novel, both = ev["parts"]["supervised"], ev["parts"]["anomaly"], ev["binary"]
            assert both["recall"] >= max(known["recall"], novel["recall"]) - 1e-12
            assert both["fpr"] >= max(known["fpr"], novel["fpr"]) - 1e-12
            assert both["fpr"] <= known["fpr"] + novel["fpr"] + 1e-12
    site = sites[data.names.index("unsw-nb15")]
    bundle = ModelBundle.load(tmp_path / "unsw-nb15" / "model.fedlstm")
    assert isinstance(bundle, HybridDetector) and bundle.model_name == "lstm-encoded-hybrid"
    assert bundle.class_names == get_spec("unsw-nb15").family_order  # its own head, kept
    test = data.site_tests(data.names.index("unsw-nb15"))["unsw-nb15/test"]
    ev = site.novelty.evaluate(bundle, test, set())
    reported = server.reports["unsw-nb15"]["tests"]["unsw-nb15/test"]
    assert ev["binary"]["accuracy"] == pytest.approx(reported["binary"]["accuracy"])


def test_a_site_aligns_its_encoder_to_the_final_body_and_the_shared_weights_stay(datasets_dir,
                                                                                 three_networks):
    """After the last round a site trains its encoder alone against the final body: the shared
    arrays are exactly the federation's, the encoder moves, and its validation loss falls."""
    from fedlstm.federation.networks import NetworkSite
    from fedlstm.tasks import task_for

    data, i = three_networks, NETWORKS.index("unsw-nb15")
    cfg = _cfg(datasets_dir, inputs="encoders", clients=3, align_epochs=3)
    site = NetworkSite(task_for(cfg), data.clients[i], data.specs[i], data.names[i],
                       data.site_tests(i))
    site.use_preprocessing()
    final = shared_weights(site.new_model())  # any final model: here the site's first draw
    val = site.windows.val

    def val_loss(model) -> float:
        logits = model.forward_sliding(val.features, val.ends, val.window, starts=val.starts)
        return float(torch.nn.functional.cross_entropy(logits, val.window_labels))

    before = site.model(final)
    site.align_encoder(final)
    after = site.model(final)
    assert all(np.array_equal(a, b) for a, b in zip(shared_weights(after), final))
    assert not all(np.array_equal(a, b) for a, b in
                   zip(private_weights(after), private_weights(before)))
    assert val_loss(after.eval()) < val_loss(before.eval())

    report = site.report(final)  # the site's report adds its detector's validation scores
    assert 0.5 <= report["validation"]["accuracy"] <= 1.0
    assert set(report["validation"]) == {"accuracy", "fpr", "roc_auc"}


def test_a_starved_site_keeps_a_seeded_share_of_its_rows(three_networks):
    from fedlstm.reports.networks import starve

    thin = starve(three_networks, 0, 0.1, seed=3)
    assert len(thin.clients[0]) == max(round(0.1 * len(three_networks.clients[0])), 50)
    assert len(thin.clients[1]) == len(three_networks.clients[1])
    again = starve(three_networks, 0, 0.1, seed=3)
    assert thin.clients[0].frame.equals(again.clients[0].frame)


def test_sites_given_as_files_of_different_formats_federate(tmp_path):
    """A Zeek site and a CICFlowMeter site (`--train-file` with one `--schema` each): each is
    scored on its own random split, through its own encoder, by the default detector (the
    hybrid: each site adds its own model of normal traffic)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from _flow_corpus import write_corpus

    from fedlstm.cli.common import byo_overrides, load_run_config
    from fedlstm.federation.simulation import federate
    from fedlstm.federation.sites import federated_data

    corpus = write_corpus(tmp_path / "logs", n=400)
    files = [corpus["zeek-tsv-labelled"].path, corpus["cic-2017"].path]
    cfg = load_run_config(None, ["model.hidden_size=8", "federation.rounds=1",
                                 "federation.shared_dim=4", "federation.partition=files"],
                          **byo_overrides(["zeek-conn", "cicflowmeter"], files, None))
    assert cfg.detector == "hybrid" and cfg.data.site_schemas == ["zeek-conn", "cicflowmeter"]
    data = federated_data(cfg)
    assert [s.name for s in data.specs] == ["zeek-conn", "cicflowmeter"]
    server = federate(cfg, data, None, engine="inprocess")
    assert [sorted(r["tests"]) for r in server.result.values()] == \
        [[f"{name}/test"] for name in data.names]
    assert all("parts" in ev for r in server.result.values() for ev in r["tests"].values())
    with pytest.raises(ValueError, match="test-file"):
        federated_data(cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"test_file": str(files[0])})}))


def test_a_network_scored_on_its_random_split_is_said_once_and_noted_every_time(monkeypatch,
                                                                                caplog):
    """A study splits each network many times (per model, per seed); the fallback from the
    official protocol is said once per process, and every split still carries it in its notes."""
    from types import SimpleNamespace

    from fedlstm.data.registry import DatasetNotFound
    from fedlstm.federation import sites

    def build_split(data, seed, carve_val):
        if data.protocol == "official":
            raise DatasetNotFound("the official protocol needs the training file")
        return SimpleNamespace(notes={"rows": 10})

    monkeypatch.setattr(sites, "build_split", build_split)
    monkeypatch.setattr(sites, "_FELL_BACK", set())
    cfg = RunConfig.model_validate({"data": {"protocol": "official"}})
    with caplog.at_level("WARNING", logger=sites.log.name):
        splits = [sites.network_split(cfg, "unsw-nb15") for _ in range(3)]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["unsw-nb15"]
    assert all(s.notes == {"rows": 10, "protocol": "random-split, official files missing"}
               for s in splits)


def test_a_run_across_networks_is_recognised_as_the_run_it_was_asked_for(datasets_dir,
                                                                        tmp_path):
    """config.json holds what the sites settled (one client per network, the inputs 'auto'
    picked), so a study that compared its request with it (privacy-utility) never reused the
    run; the run directory keeps the request beside it."""
    from fedlstm.federation.simulation import run_federated
    from fedlstm.runs.rundir import ran_with

    cfg = _cfg(datasets_dir, rounds=1)
    run_federated(cfg, tmp_path / "run", engine="inprocess", plots=False)
    settled = RunConfig.model_validate_json((tmp_path / "run" / "config.json").read_text())
    assert (settled.federation.clients, settled.federation.inputs) != \
        (cfg.federation.clients, cfg.federation.inputs)
    assert ran_with(tmp_path / "run", cfg)
    assert not ran_with(tmp_path / "run", _cfg(datasets_dir, rounds=2))
