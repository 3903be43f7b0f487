"""Bundles are untrusted input until checked: signatures, a bounded manifest, capped members.

Every bundle here is made in code from the tiny bundle of `_detect_helpers` (trained once per
session); "edited" bundles are re-signed with the session's throwaway key (tests/conftest.py),
so that each test reaches the check it is about.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import stat
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _detect_helpers import tiny  # noqa: F401
from typer.testing import CliRunner

from fedlstm import __version__
from fedlstm.cli.main import app as main_app
from fedlstm.detection import BundleError, ModelBundle
from fedlstm.detection.anomaly import MahalanobisDetector
from fedlstm.detection.bundle import FORMAT_VERSION, MEMBER_LIMITS
from fedlstm.detection.signing import KeyHome, TrustStore, sign_bundle
from fedlstm.models import build_model

runner = CliRunner()
detect_app = main_app


# --- helpers -------------------------------------------------------------------------------------
def members_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def rewrite(src: Path, dst: Path, edit=None, weights: bytes | None = None,
            sign: str | object = "own") -> Path:
    """A copy of `src` with its manifest edited, hashes recomputed and signed again: by the local
    key ("own"), by a given SigningKey, or not at all (None)."""
    members = members_of(src)
    manifest = json.loads(members["manifest.json"])
    if weights is not None:
        members["weights.pt"] = weights
        manifest["sha256"]["weights.pt"] = hashlib.sha256(weights).hexdigest()
    if edit is not None:
        edit(manifest)
    body = json.dumps(manifest).encode()
    out = {"manifest.json": body, "weights.pt": members["weights.pt"],
           "manifest.sha256": hashlib.sha256(body).hexdigest().encode()}
    key = KeyHome.default().signing_key() if sign == "own" else sign
    if key is not None:
        out["signature.json"] = sign_bundle(key, body, members["weights.pt"])
    return write_zip(dst, out)


def setter(*keys_and_value):
    *keys, value = keys_and_value

    def edit(manifest):
        target = manifest
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return edit


def other_party(tmp_path: Path, name: str = "coordinator"):
    home = KeyHome(tmp_path / f"{name}-keys")
    return home, home.init()


# --- 1. signatures -------------------------------------------------------------------------------
def test_written_bundle_is_signed_by_the_own_key(tiny):
    bundle = ModelBundle.load(tiny[2])
    assert "signature.json" in members_of(tiny[2])
    assert bundle.provenance["signed_by"] == KeyHome.default().signing_key().fingerprint


@pytest.mark.parametrize("threshold", [1.01, 0.99])
def test_edited_threshold_with_recomputed_hash_is_refused(tiny, tmp_path, threshold):
    """The hashes are recomputed, as an attacker would: only the signature notices."""
    bad = rewrite(tiny[2], tmp_path / "edited.fedlstm", setter("threshold", threshold), sign=None)
    with zipfile.ZipFile(bad, "a") as zf:  # keep the original, now stale, signature
        zf.writestr("signature.json", members_of(tiny[2])["signature.json"])
    with pytest.raises(BundleError, match="modified after it was signed") as err:
        ModelBundle.load(bad)
    assert str(bad) in str(err.value) and "SHA256:" in str(err.value)
    with pytest.raises(BundleError, match="modified after it was signed"):
        ModelBundle.load(bad, allow_unsigned=True)  # a wrong signature is never waved through
    r = runner.invoke(detect_app, ["detect", str(bad), str(tiny[1])])
    assert r.exit_code == 2 and "modified after it was signed" in r.output


def test_unsigned_bundle_is_refused_unless_allowed(tiny, tmp_path, caplog):
    unsigned = rewrite(tiny[2], tmp_path / "unsigned.fedlstm", sign=None)
    with pytest.raises(BundleError, match="not signed") as err:
        ModelBundle.load(unsigned)
    assert str(unsigned) in str(err.value) and "--allow-unsigned" in str(err.value)
    with caplog.at_level(logging.WARNING):
        bundle = ModelBundle.load(unsigned, allow_unsigned=True)
    assert bundle.provenance["signed_by"] is None and "is not signed" in caplog.text

    for args in (["detect", str(unsigned), str(tiny[1])], ["serve", str(unsigned)]):
        r = runner.invoke(detect_app, args)
        assert r.exit_code == 2 and "not signed" in r.output, args
    r = runner.invoke(main_app, ["evaluate", str(unsigned)])
    assert r.exit_code == 2 and "not signed" in r.output
    out = tmp_path / "alerts.jsonl"
    r = runner.invoke(detect_app, ["detect", str(unsigned), str(tiny[1]), "--allow-unsigned",
                                   "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "--allow-unsigned" in r.output and out.read_text()


def test_bundle_of_an_untrusted_key_is_refused_until_trusted(tiny, tmp_path, monkeypatch):
    home, their_key = other_party(tmp_path)
    theirs = rewrite(tiny[2], tmp_path / "theirs.fedlstm", sign=their_key)
    with pytest.raises(BundleError, match="not trusted") as err:
        ModelBundle.load(theirs)
    assert their_key.fingerprint in str(err.value) and "fedlstm keys trust" in str(err.value)

    # --trusted-key FILE for one command
    r = runner.invoke(detect_app, ["detect", str(theirs), str(tiny[1])])
    assert r.exit_code == 2 and their_key.fingerprint in r.output.replace("\n", "")
    r = runner.invoke(detect_app, ["detect", str(theirs), str(tiny[1]), "--trusted-key",
                                   str(home.public_path), "--out", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0, r.output

    # `fedlstm keys trust FILE` for good (in a key home of its own, to leave the session's alone)
    mine = KeyHome(tmp_path / "my-keys")
    mine.init()
    monkeypatch.setenv("FEDLSTM_KEYS", str(mine.path))
    with pytest.raises(BundleError, match="not trusted"):
        ModelBundle.load(theirs)
    r = runner.invoke(main_app, ["keys", "trust", str(home.public_path)])
    assert r.exit_code == 0 and "now trusted" in r.output and their_key.fingerprint in r.output
    loaded = ModelBundle.load(theirs)
    assert loaded.provenance["signed_by"] == their_key.fingerprint
    r = runner.invoke(main_app, ["keys", "untrust", their_key.fingerprint])
    assert r.exit_code == 0
    with pytest.raises(BundleError, match="not trusted"):
        ModelBundle.load(theirs)


def test_keys_init_show_trust(tmp_path):
    d = tmp_path / "keys"
    r = runner.invoke(main_app, ["keys", "init", "--dir", str(d)])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((d / "signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    fp = KeyHome(d).signing_key(create=False).fingerprint
    assert fp in r.output.replace("\n", "")
    r = runner.invoke(main_app, ["keys", "init", "--dir", str(d)])
    assert r.exit_code == 2 and "already exists" in r.output  # never replaces a key

    r = runner.invoke(main_app, ["keys", "show", "--dir", str(d)])
    assert r.exit_code == 0
    assert (d / "signing.pub").read_text().split()[1] in r.output and fp in r.output

    _, theirs = other_party(tmp_path)
    r = runner.invoke(main_app, ["keys", "trust", str(theirs.public.source), "--dir", str(d)])
    assert r.exit_code == 0 and "now trusted" in r.output
    r = runner.invoke(main_app, ["keys", "trust", str(theirs.public.source), "--dir", str(d)])
    assert "already trusted" in r.output
    assert set(KeyHome(d).trust_store().keys) == {fp, theirs.fingerprint}
    r = runner.invoke(main_app, ["keys", "trust", str(theirs.path), "--dir", str(d)])
    assert r.exit_code == 2 and "private key" in r.output  # the wrong file of the pair
    r = runner.invoke(main_app, ["keys", "show", "--dir", str(tmp_path / "none")])
    # The hint names the folder: a bare `keys init` made the key in the default home instead.
    assert r.exit_code == 2 and f"keys init --dir {tmp_path / 'none'}" in \
        r.output.replace("\n", ""), r.output


def test_keys_sign_makes_an_old_unsigned_bundle_loadable(tiny, tmp_path):
    old = rewrite(tiny[2], tmp_path / "old.fedlstm", sign=None)
    r = runner.invoke(main_app, ["keys", "sign", str(old)])
    assert r.exit_code == 0 and "was unsigned" in r.output
    assert ModelBundle.load(old).provenance["signed_by"] == KeyHome.default().signing_key().fingerprint


def test_run_without_a_usable_key_home_writes_unsigned_and_says_so(tmp_path, monkeypatch, caplog):
    from fedlstm.runs.rundir import run_signing_key

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FEDLSTM_KEYS", str(tmp_path / "file" / "keys"))  # cannot be created
    with caplog.at_level(logging.ERROR):
        assert run_signing_key() is None
    assert "UNSIGNED" in caplog.text and "fedlstm keys sign" in caplog.text


def test_save_refuses_what_load_would_refuse(tiny, tmp_path):
    bundle = ModelBundle.load(tiny[2])
    bundle.threshold_ = 7.0
    with pytest.raises(BundleError, match="not a probability"):
        bundle.save(tmp_path / "bad.fedlstm")
    assert not (tmp_path / "bad.fedlstm").exists()


def test_new_user_train_then_detect_needs_no_flags(tiny, tmp_path, monkeypatch, caplog):
    """A first `train` creates the key (with a notice) and `detect` of its bundle just works."""
    schema, flows, _ = tiny
    home = tmp_path / "home"
    monkeypatch.delenv("FEDLSTM_KEYS")
    monkeypatch.setenv("FEDLSTM_HOME", str(home))
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        r = runner.invoke(main_app, ["train", "--schema", str(schema), "--train-file", str(flows),
                                     "--window", "3", "--epochs", "1", "--out", str(out),
                                     "--set", "model.hidden_size=8"])
    assert r.exit_code == 0, r.output
    assert (home / "keys" / "signing.key").exists() and "created a signing key" in caplog.text
    fp = KeyHome.default().signing_key(create=False).fingerprint
    assert json.loads((out / "metrics.json").read_text())["bundle_signed_by"] == fp
    r = runner.invoke(detect_app, ["detect", str(out / "model.fedlstm"), str(flows),
                                   "--out", str(tmp_path / "alerts.jsonl")])
    assert r.exit_code == 0, r.output


# --- 2. the manifest is validated before anything is allocated -----------------------------------
def _drop_last(key):
    def edit(manifest):
        manifest["preprocessor"][key] = manifest["preprocessor"][key][:-1]
    return edit


BAD_MANIFESTS = {
    "unknown model": (setter("model", "name", "transformer"), "not a known classifier"),
    "input size": (lambda m: m["model"].update(input_size=m["model"]["input_size"] + 1),
                   "preprocessing gives"),
    "n_classes": (setter("model", "n_classes", 5), "n_classes is 5"),
    "class names": (lambda m: m["class_names"].append("extra"), "n_classes is 2"),
    "huge hidden": (setter("model", "params", "hidden_size", 10 ** 6), "less than or equal to 4096"),
    "negative hidden": (setter("model", "params", "hidden_size", -4), "greater than or equal to 1"),
    "absurd layers": (setter("model", "params", "num_layers", 10 ** 9), "less than or equal to 16"),
    "zero window": (setter("window", 0), "window"),
    "huge window": (setter("window", 10 ** 9), "window"),
    "dropout": (setter("model", "params", "dropout", 3.0), "dropout"),
    "unknown param": (setter("model", "params", "evil", 1), "Extra inputs"),
    "hidden vs weights": (setter("model", "params", "hidden_size", 32), "do not fit"),
    "preprocessor arrays": (_drop_last("data_min_"), "data_min_ has"),
    "spec": (setter("spec", "not a schema"), "spec"),
    "task": (setter("task", "regression"), "task"),
    "threshold range": (setter("threshold", 7.0), "not a probability"),
    "threshold nan": (setter("threshold", float("nan")), "NaN"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_invalid_manifest_is_a_clean_bundle_error(tiny, tmp_path, case):
    edit, message = BAD_MANIFESTS[case]
    bad = rewrite(tiny[2], tmp_path / "bad.fedlstm", edit)  # correctly signed: validity is checked too
    with pytest.raises(BundleError, match=message) as err:
        ModelBundle.load(bad)
    assert str(err.value).startswith(str(bad))


def test_weights_that_are_not_a_state_dict_are_refused(tiny, tmp_path):
    buffer = io.BytesIO()
    torch.save([torch.zeros(3)], buffer)
    bad = rewrite(tiny[2], tmp_path / "list.fedlstm", weights=buffer.getvalue())
    with pytest.raises(BundleError, match="not a state_dict"):
        ModelBundle.load(bad)
    bad = rewrite(tiny[2], tmp_path / "junk.fedlstm", weights=b"\x80\x04junk")
    with pytest.raises(BundleError, match="weights.pt"):
        ModelBundle.load(bad)


def _anomaly_detector(tiny_path: Path) -> MahalanobisDetector:
    base = ModelBundle.load(tiny_path)
    d = base.preprocessor.n_features_out
    params = {"hidden_size": 8, "num_layers": 1, "dropout": 0.0}
    return MahalanobisDetector(spec=base.spec, preprocessor=base.preprocessor,
                               model=build_model("lstm-ae", d, 2, **params), model_name="lstm-ae",
                               model_params=params, task="binary",
                               class_names=["normal", "attack"], window=base.window,
                               threshold_=12.5, mean_=np.full(d, 0.1), covariance_=np.eye(d),
                               shrinkage_=0.1)


def test_anomaly_detector_round_trip_and_bad_covariance(tiny, tmp_path):
    det = _anomaly_detector(tiny[2])
    path = det.save(tmp_path / "anomaly.fedlstm")
    loaded = ModelBundle.load(path)
    assert isinstance(loaded, MahalanobisDetector)
    np.testing.assert_allclose(loaded.covariance_, det.covariance_)
    bad = rewrite(path, tmp_path / "bad.fedlstm",
                  lambda m: m["anomaly"].update(covariance=m["anomaly"]["covariance"][:-1]))
    with pytest.raises(BundleError, match="covariance must be"):
        ModelBundle.load(bad)
    bad = rewrite(path, tmp_path / "nan.fedlstm", setter("anomaly", "covariance", [
        [float("nan")] * len(det.mean_)] * len(det.mean_)))
    with pytest.raises(BundleError, match="finite"):
        ModelBundle.load(bad)
    bad = rewrite(path, tmp_path / "lstm.fedlstm", setter("model", "name", "lstm"))
    with pytest.raises(BundleError, match="not a known sequence model"):
        ModelBundle.load(bad)


# --- 3. size caps and damaged zips ---------------------------------------------------------------
def test_zip_bomb_member_is_refused_without_reading_it(tiny, tmp_path):
    members = members_of(tiny[2])
    bomb = tmp_path / "bomb.fedlstm"
    size = MEMBER_LIMITS["manifest.json"] + (1 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("manifest.json", "w", force_zip64=True) as f:
            chunk = b" " * (1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        for name in ("weights.pt", "manifest.sha256", "signature.json"):
            zf.writestr(name, members[name])
    assert bomb.stat().st_size < 1 << 20  # ~65 MB of manifest in well under a megabyte
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="decompresses to more than"):
            ModelBundle.load(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_lying_declared_size_is_read_with_a_bound(tiny, tmp_path, monkeypatch):
    """A central directory that understates a member's size must not let it grow past the cap."""
    monkeypatch.setitem(MEMBER_LIMITS, "manifest.json", 1 << 20)
    members = members_of(tiny[2])
    members["manifest.json"] = members["manifest.json"] + b" " * (4 << 20)
    liar = write_zip(tmp_path / "liar.fedlstm", members)
    data = bytearray(liar.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:  # claim every member is 100 bytes
        data[at + 24:at + 28] = struct.pack("<I", 100)
        at = data.find(b"PK\x01\x02", at + 4)
    liar.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        ModelBundle.load(liar)


def test_corrupt_deflate_stream_is_a_bundle_error(tiny, tmp_path):
    path = write_zip(tmp_path / "corrupt.fedlstm", members_of(tiny[2]))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("manifest.json")
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start:start + 64] = b"\xff" * 64  # BTYPE 11: an invalid deflate block
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        ModelBundle.load(path)


def test_unexpected_or_duplicate_members_are_refused(tiny, tmp_path):
    members = members_of(tiny[2])
    extra = write_zip(tmp_path / "extra.fedlstm", {**members, "payload.py": b"import os"})
    with pytest.raises(BundleError, match="unexpected members.*payload.py"):
        ModelBundle.load(extra)
    dup = write_zip(tmp_path / "dup.fedlstm", members)
    with pytest.warns(UserWarning), zipfile.ZipFile(dup, "a") as zf:
        zf.writestr("manifest.json", b"{}")
    with pytest.raises(BundleError, match="appears twice"):
        ModelBundle.load(dup)


def test_compressed_records_inside_weights_are_refused(tiny, tmp_path):
    """torch's own zip inside weights.pt could be a second bomb: torch never compresses it."""
    weights = members_of(tiny[2])["weights.pt"]
    with zipfile.ZipFile(io.BytesIO(weights)) as src:
        records = {i.filename: src.read(i) for i in src.infolist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in records.items():
            dst.writestr(name, data)
    bad = rewrite(tiny[2], tmp_path / "inner.fedlstm", weights=buffer.getvalue())
    with pytest.raises(BundleError, match="compressed records"):
        ModelBundle.load(bad)


# --- 4. versions ---------------------------------------------------------------------------------
def test_bundle_of_another_fedlstm_version_says_so(tiny, tmp_path, caplog):
    older = rewrite(tiny[2], tmp_path / "older.fedlstm", setter("fedlstm_version", "0.0.9"))
    with caplog.at_level(logging.WARNING, logger="fedlstm.detection.bundle"):
        bundle = ModelBundle.load(older)
    assert f"written by fedlstm 0.0.9; this is fedlstm {__version__}" in caplog.text
    assert bundle.provenance["fedlstm_version"] == "0.0.9"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedlstm.detection.bundle"):
        ModelBundle.load(tiny[2])
    assert "written by fedlstm" not in caplog.text  # same version: no note
    future = rewrite(tiny[2], tmp_path / "future.fedlstm", setter("format_version", FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=f"v{FORMAT_VERSION + 1} is not supported"):
        ModelBundle.load(future)


def test_explicit_trust_store_replaces_the_default(tiny, tmp_path):
    _, theirs = other_party(tmp_path)
    with pytest.raises(BundleError, match="not trusted"):
        ModelBundle.load(tiny[2], trust=TrustStore.of([theirs.public]))
