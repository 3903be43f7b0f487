"""The common flow vocabulary: one fixed vector for every schema, the same flow alike in each."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedlstm.data.flowschemas import resolve_spec
from fedlstm.data.schemas import get_spec
from fedlstm.data.spec import DatasetSpec
from fedlstm.features import FlowPreprocessor
from fedlstm.features.harmonise import (
    COMMON_FEATURES,
    PROTOCOLS,
    SERVICES,
    STATES,
    HarmonisedPreprocessor,
    harmonised,
    mapping_for,
)

NSL, KDD99, UNSW, ZEEK = (get_spec(n) for n in ("nsl-kdd", "kdd99", "unsw-nb15", "zeek-conn"))
CIC = resolve_spec(get_spec("cicflowmeter"), [
    "Src IP", "Dst IP", "Dst Port", "Timestamp", "Protocol", "Flow Duration", "Total Fwd Packets", "Total Backward Packets",
    "Total Length of Fwd Packets", "Total Length of Bwd Packets", "Label"])
IDX = {name: i for i, name in enumerate(COMMON_FEATURES)}
PROTO = [IDX[f"proto_{p}"] for p in PROTOCOLS]
SERVICE = [IDX[f"service_{s}"] for s in SERVICES]
STATE = [IDX[f"state_{s}"] for s in STATES]
SHARED = [IDX["duration"], IDX["bytes_out"], IDX["bytes_in"], *PROTO, *SERVICE]


def frame_for(spec: DatasetSpec, rows: list[dict]) -> pd.DataFrame:
    """Rows in the spec's columns: the given values, 0 or '-' (categorical) elsewhere."""
    columns = [c for c in spec.columns if c != spec.label and c != spec.family_column]
    return pd.DataFrame([{c: row.get(c, "-" if c in spec.categorical else 0) for c in columns}
                         for row in rows])


def classes(out: np.ndarray, block: list[int], names: list[str]) -> list[str]:
    assert (out[:, block].sum(axis=1) == 1).all()
    return [names[i] for i in out[:, block].argmax(axis=1)]


# The same four flows in each schema's own words and units.
FLOWS = {
    "nsl-kdd": [
        {"duration": 2, "protocol_type": "tcp", "service": "http", "flag": "SF",
         "src_bytes": 300, "dst_bytes": 5000},
        {"duration": 0, "protocol_type": "udp", "service": "domain_u", "flag": "SF",
         "src_bytes": 45, "dst_bytes": 90},
        {"duration": 0, "protocol_type": "tcp", "service": "telnet", "flag": "REJ",
         "src_bytes": 0, "dst_bytes": 0},
        {"duration": 30, "protocol_type": "tcp", "service": "ftp_data", "flag": "S0",
         "src_bytes": 12_000_000, "dst_bytes": 0},
    ],
    "unsw-nb15": [
        {"dur": 2.0, "proto": "tcp", "service": "http", "state": "FIN", "sbytes": 300,
         "dbytes": 5000, "spkts": 6, "dpkts": 8},
        {"dur": 0.0, "proto": "udp", "service": "dns", "state": "CON", "sbytes": 45,
         "dbytes": 90, "spkts": 1, "dpkts": 1},
        {"dur": 0.0, "proto": "tcp", "service": "ssh", "state": "RST", "sbytes": 0,
         "dbytes": 0, "spkts": 1, "dpkts": 1},
        {"dur": 30.0, "proto": "tcp", "service": "ftp-data", "state": "REQ",
         "sbytes": 12_000_000, "dbytes": 0, "spkts": 9000, "dpkts": 0},
    ],
    "zeek-conn": [
        {"duration": 2.0, "proto": "tcp", "service": "http", "conn_state": "SF",
         "orig_bytes": 300, "resp_bytes": 5000, "orig_pkts": 6, "resp_pkts": 8},
        {"duration": 0.0, "proto": "udp", "service": "dns", "conn_state": "SF",
         "orig_bytes": 45, "resp_bytes": 90, "orig_pkts": 1, "resp_pkts": 1},
        {"duration": 0.0, "proto": "tcp", "service": "ssh", "conn_state": "REJ",
         "orig_bytes": 0, "resp_bytes": 0, "orig_pkts": 1, "resp_pkts": 1},
        {"duration": 30.0, "proto": "tcp", "service": "ftp-data", "conn_state": "S0",
         "orig_bytes": 12_000_000, "resp_bytes": 0, "orig_pkts": 9000, "resp_pkts": 0},
    ],
    "cicflowmeter": [  # Flow Duration in microseconds, protocols as IANA numbers, no service
        {"Dst Port": 80, "Protocol": 6, "Flow Duration": 2_000_000,
         "Total Length of Fwd Packets": 300, "Total Length of Bwd Packets": 5000,
         "Total Fwd Packets": 6, "Total Backward Packets": 8},
        {"Dst Port": 53, "Protocol": 17, "Flow Duration": 0,
         "Total Length of Fwd Packets": 45, "Total Length of Bwd Packets": 90,
         "Total Fwd Packets": 1, "Total Backward Packets": 1},
        {"Dst Port": 22, "Protocol": 6, "Flow Duration": 0,
         "Total Length of Fwd Packets": 0, "Total Length of Bwd Packets": 0,
         "Total Fwd Packets": 1, "Total Backward Packets": 1},
        {"Dst Port": 20, "Protocol": 6, "Flow Duration": 30_000_000,
         "Total Length of Fwd Packets": 12_000_000, "Total Length of Bwd Packets": 0,
         "Total Fwd Packets": 9000, "Total Backward Packets": 0},
    ],
}
SPECS = {"nsl-kdd": NSL, "unsw-nb15": UNSW, "zeek-conn": ZEEK, "cicflowmeter": CIC}


@pytest.mark.parametrize("spec", [NSL, KDD99, UNSW], ids=lambda s: s.name)
def test_shape_dtype_and_unit_range_even_for_wild_values(spec):
    m = mapping_for(spec)
    rows = [{}, {m["duration"]: 1e9, m["bytes_out"]: 1e15, m["bytes_in"]: -5},
            {m["duration"]: np.nan, m["bytes_out"]: "abc", m["bytes_in"]: np.inf},
            {m["duration"]: 3.5, m["bytes_out"]: 1234, m["bytes_in"]: 99}]
    out = harmonised(frame_for(spec, rows), spec)
    assert out.shape == (4, len(COMMON_FEATURES)) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out[1, IDX["duration"]] == 1 and out[1, IDX["bytes_out"]] == 1  # clipped ceilings
    # negative, NaN, text and Inf read as 0
    assert out[1, IDX["bytes_in"]] == 0 and (out[2, [IDX["duration"], IDX["bytes_out"],
                                                     IDX["bytes_in"]]] == 0).all()
    assert 0 < out[3, IDX["duration"]] < 1


def test_fixed_log_scales():
    spec = UNSW
    out = harmonised(frame_for(spec, [{"dur": 86_400, "sbytes": 1e10, "spkts": 1e8},
                                      {"dur": 9.0, "sbytes": 99.0, "dpkts": 0}]), spec)
    assert out[0, IDX["duration"]] == pytest.approx(1.0)
    assert out[0, IDX["bytes_out"]] == pytest.approx(1.0)
    assert out[0, IDX["packets_out"]] == pytest.approx(1.0)
    assert out[1, IDX["duration"]] == pytest.approx(np.log1p(9) / np.log1p(86_400))
    assert out[1, IDX["bytes_out"]] == pytest.approx(np.log(100) / np.log1p(1e10))
    assert out[1, IDX["packets_in"]] == 0


@pytest.mark.parametrize("other", ["unsw-nb15", "zeek-conn", "cicflowmeter"])
def test_same_flow_in_another_schema_gives_the_same_common_vector(other):
    kdd = harmonised(frame_for(NSL, FLOWS["nsl-kdd"]), NSL)
    out = harmonised(frame_for(SPECS[other], FLOWS[other]), SPECS[other])
    np.testing.assert_allclose(out[:, SHARED], kdd[:, SHARED], rtol=0, atol=1e-6)
    assert classes(out, SERVICE, SERVICES) == ["web", "dns", "remote", "file"]
    assert classes(out, PROTO, PROTOCOLS) == ["tcp", "udp", "tcp", "tcp"]
    # packet counts exist here, not in NSL-KDD: flagged, and zero where absent
    assert (out[:, IDX["has_packets"]] == 1).all() and (kdd[:, IDX["has_packets"]] == 0).all()
    assert (kdd[:, [IDX["packets_out"], IDX["packets_in"]]] == 0).all()
    assert out[3, IDX["packets_out"]] > 0


def test_connection_states_of_each_schema():
    expect = {"nsl-kdd": ["completed", "completed", "rejected", "attempt"],
              "unsw-nb15": ["completed", "completed", "reset", "attempt"],
              "zeek-conn": ["completed", "completed", "rejected", "attempt"],
              "cicflowmeter": ["other"] * 4}  # CICFlowMeter has no state column
    for name, spec in SPECS.items():
        out = harmonised(frame_for(spec, FLOWS[name]), spec)
        assert classes(out, STATE, STATES) == expect[name], name


def test_vocabularies_of_the_real_files_map_to_the_right_classes():
    services = {"http_443": "web", "http_8001": "web", "domain": "dns", "smtp": "mail",
                "pop_3": "mail", "imap4": "mail", "ftp": "file", "tftp_u": "file",
                "ssh": "remote", "login": "remote", "kshell": "remote", "private": "other",
                "eco_i": "other", "-": "other"}
    flags = {"S1": "completed", "S3": "completed", "RSTO": "reset", "RSTR": "reset",
             "RSTOS0": "reset", "SH": "attempt", "OTH": "attempt"}
    rows = [{"service": s, "flag": f} for s, f in zip(services, [*flags, *["SF"] * 7])]
    out = harmonised(frame_for(NSL, rows), NSL)
    assert classes(out, SERVICE, SERVICES) == list(services.values())
    assert classes(out, STATE, STATES)[:len(flags)] == list(flags.values())
    unsw = [{"state": s, "service": v} for s, v in
            [("INT", "pop3"), ("ACC", "ssl"), ("CLO", "dhcp")]]
    out = harmonised(frame_for(UNSW, unsw), UNSW)
    assert classes(out, STATE, STATES) == ["attempt", "completed", "completed"]
    assert classes(out, SERVICE, SERVICES) == ["mail", "web", "other"]


def test_unknown_and_missing_values_go_to_other_and_one_hots_sum_to_one():
    rows = [{"proto": p, "service": s, "state": st, "dur": 1}
            for p, s, st in [("gre", "snmp", "ECO"), ("ospf", "zzz", "no"), (None, None, None),
                             ("TCP", " HTTP ", "fin"), ("unas", "-", "")]]
    out = harmonised(frame_for(UNSW, rows), UNSW)
    assert classes(out, PROTO, PROTOCOLS) == ["other", "other", "other", "tcp", "other"]
    assert classes(out, SERVICE, SERVICES) == ["other", "other", "other", "web", "other"]
    assert classes(out, STATE, STATES) == ["other", "other", "other", "completed", "other"]


def test_port_decides_the_service_only_where_the_frame_has_it():
    frame = frame_for(CIC, [{"Dst Port": p} for p in (443, 8080, 25, 993, 69, 3389, 12345)])
    out = harmonised(frame, CIC)
    assert classes(out, SERVICE, SERVICES) == ["web", "web", "mail", "mail", "file", "remote",
                                               "other"]
    # Records.frame drops identifier columns such as the port: the class is then unknown
    out = harmonised(frame.drop(columns=["Dst Port"]), CIC)
    assert classes(out, SERVICE, SERVICES) == ["other"] * 7
    # Protocols given as IANA numbers, also as text or floats
    out = harmonised(frame_for(CIC, [{"Protocol": v} for v in (6, "17", 1.0, 58, 0)]), CIC)
    assert classes(out, PROTO, PROTOCOLS) == ["tcp", "udp", "icmp", "icmp", "other"]


def test_zeek_multi_service_and_missing_fields():
    rows = [{"service": "ssl,http", "duration": "-", "orig_bytes": None, "proto": "icmp",
             "conn_state": "RSTRH"}]
    out = harmonised(frame_for(ZEEK, rows), ZEEK)
    assert classes(out, SERVICE, SERVICES) == ["web"]
    assert classes(out, PROTO, PROTOCOLS) == ["icmp"]
    assert classes(out, STATE, STATES) == ["reset"]
    assert out[0, IDX["duration"]] == 0 and out[0, IDX["bytes_out"]] == 0


def test_mapping_of_the_builtin_schemas():
    assert mapping_for(NSL) == mapping_for(KDD99) == {
        "duration": "duration", "bytes_out": "src_bytes", "bytes_in": "dst_bytes",
        "packets_out": None, "packets_in": None, "protocol": "protocol_type",
        "service": "service", "dst_port": None, "state": "flag"}
    assert mapping_for(UNSW) == {
        "duration": "dur", "bytes_out": "sbytes", "bytes_in": "dbytes", "packets_out": "spkts",
        "packets_in": "dpkts", "protocol": "proto", "service": "service", "dst_port": None,
        "state": "state"}
    assert mapping_for(CIC)["service"] is None and mapping_for(CIC)["dst_port"] == "Dst Port"
    # CICFlowMeter-V3 spellings are found too
    v3 = resolve_spec(get_spec("cicflowmeter"), ["Tot Fwd Pkts", "TotLen Bwd Pkts", "Flow Duration"])
    assert mapping_for(v3)["packets_out"] == "Total Fwd Packets"
    assert mapping_for(v3)["bytes_in"] == "Total Length of Bwd Packets"


def test_schema_without_any_concept_cannot_be_harmonised():
    spec = DatasetSpec(name="sensor-x", folder="", title="t", columns=["alpha", "beta", "label"],
                       categorical=["beta"], label="label")
    with pytest.raises(ValueError, match="sensor-x"):
        mapping_for(spec)
    with pytest.raises(ValueError, match="sensor-x"):
        harmonised(pd.DataFrame({"alpha": [1], "beta": ["a"]}), spec)
    with pytest.raises(ValueError, match="cicflowmeter"):  # not yet resolved on a header
        HarmonisedPreprocessor(FlowPreprocessor([], []), get_spec("cicflowmeter"))


def test_frame_lacking_a_mapped_feature_column_is_an_error():
    frame = frame_for(NSL, FLOWS["nsl-kdd"]).drop(columns=["src_bytes"])
    with pytest.raises(ValueError, match="src_bytes"):
        harmonised(frame, NSL)


def test_preprocessor_concatenates_and_round_trips():
    frame = frame_for(NSL, [*FLOWS["nsl-kdd"], {"count": 7, "hot": 2, "service": "smtp"}])
    pre = FlowPreprocessor(NSL.numeric_columns, NSL.categorical).fit(frame)
    hp = HarmonisedPreprocessor(pre, NSL)
    assert hp.n_common == len(COMMON_FEATURES)
    assert hp.n_features_out == len(COMMON_FEATURES) + pre.n_features_out
    out = hp.transform(frame)
    assert out.dtype == np.float32 and out.shape == (len(frame), hp.n_features_out)
    np.testing.assert_array_equal(out, np.concatenate([harmonised(frame, NSL),
                                                       pre.transform(frame)], axis=1))
    restored = HarmonisedPreprocessor.from_dict(json.loads(json.dumps(hp.to_dict())))
    assert restored.spec == NSL and restored.n_features_out == hp.n_features_out
    np.testing.assert_array_equal(restored.transform(frame), out)
    state = hp.to_dict()
    state["common_features"] = state["common_features"][:-1]
    with pytest.raises(ValueError, match="vocabulary"):
        HarmonisedPreprocessor.from_dict(state)
