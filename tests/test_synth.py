"""The synthetic world: determinism across workers, split hygiene for Other, resume, refusal, manifest."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from receiptlib.common import OTHER
from receiptlib import presets, synth

# Small enough for a few seconds per generation, still with every kind of Other photo.
SMALL = synth.SynthConfig(name="small", n_known=4, n_unknown_val=4, n_unknown_test=4, n_lookalike=1,
                          train_per_class=2, val_per_class=1, test_per_class=1, val_other=6, test_other=4,
                          width=96, height=128)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("tiny") / "ds", "tiny", seed=0, workers=2)


def test_same_seed_is_byte_identical_with_1_and_2_workers(tmp_path):
    a = synth.generate(tmp_path / "a", SMALL, seed=3, workers=1)
    b = synth.generate(tmp_path / "b", SMALL, seed=3, workers=2)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    c = synth.generate(tmp_path / "c", SMALL, seed=4, workers=1)
    assert _files(c)["manifest.csv"] != fa["manifest.csv"]


def test_resume_after_deleting_images_and_interruption_gives_identical_bytes(tmp_path):
    ref = _files(synth.generate(tmp_path / "ref", SMALL, seed=1, workers=1))
    out = synth.generate(tmp_path / "ds", SMALL, seed=1, workers=1)
    jpgs = sorted(out.rglob("*.jpg"))
    for p in jpgs[::3]:
        p.unlink()
    synth.generate(out, SMALL, seed=1, workers=2)
    assert _files(out) == ref
    # an interrupted run: no manifest yet, synth.json incomplete, a half-written row and a stray temp file
    (out / "manifest.csv").unlink()
    meta = json.loads((out / "synth.json").read_text())
    meta["complete"] = False
    (out / "synth.json").write_text(json.dumps(meta))
    for p in jpgs[1::4]:
        p.unlink(missing_ok=True)
    (out / ".parts").mkdir()
    (out / ".parts" / "rows-1.jsonl").write_text('{"path": "train/x/0.jpg", "spl')
    (jpgs[0].parent / f".{jpgs[0].name}.123.tmp").write_bytes(b"partial")
    assert not synth.is_complete(out)
    synth.generate(out, SMALL, seed=1, workers=1)
    assert _files(out) == ref
    assert synth.is_complete(out, SMALL, 1)


def test_resume_skips_finished_images(tmp_path, monkeypatch):
    out = synth.generate(tmp_path / "ds", SMALL, seed=0, workers=1)
    victim = sorted(out.rglob("*.jpg"))[5]
    victim.unlink()
    calls = []
    real = synth.writer.make_photo
    monkeypatch.setattr(synth.writer, "make_photo", lambda *a: calls.append(a[-1]) or real(*a))
    synth.generate(out, SMALL, seed=0, workers=1)
    assert len(calls) == 1 and victim.exists()


def test_refuses_to_overwrite_a_different_data_set(tmp_path):
    out = synth.generate(tmp_path / "ds", SMALL, seed=0, workers=1)
    before = _files(out)
    with pytest.raises(ValueError, match=r"different synthetic data set.*seed"):
        synth.generate(out, SMALL, seed=1, workers=1)
    with pytest.raises(ValueError, match=r"config.train_per_class"):
        synth.generate(out, replace(SMALL, train_per_class=3), seed=0, workers=1)
    assert _files(out) == before
    other = tmp_path / "photos"
    (other / "train" / "A").mkdir(parents=True)
    (other / "train" / "A" / "x.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match=r"no synth.json"):
        synth.generate(other, SMALL, seed=0)


def test_ensure_dataset_regenerates_an_older_version_of_its_preset(tmp_path, monkeypatch):
    monkeypatch.setitem(synth.PRESETS, "small", SMALL)
    out = synth.ensure_dataset("small", seed=0, root=tmp_path, workers=1)
    fresh = _files(out)
    meta = json.loads((out / "synth.json").read_text())
    meta["config"]["difficulty"] = 0.5  # as a checkout of an older preset would have left it
    (out / "synth.json").write_text(json.dumps(meta))
    (out / "train" / "stale.jpg").write_bytes(b"old")
    assert synth.ensure_dataset("small", seed=0, root=tmp_path, workers=1) == out
    assert _files(out) == fresh  # regenerated: the old files are gone, the preset's own bytes are back


def test_synth_presets_are_the_presets_synth_settings():
    assert set(synth.PRESETS) == set(presets.PRESETS)
    assert synth.PRESETS["quick"].difficulty >= 0.6 and synth.PRESETS["hard"].difficulty == 1.0
    assert synth.PRESETS["tiny"].name == "tiny" and synth.PRESETS["tiny"].train_per_class == 4
    with pytest.raises(ValueError, match="unknown synth preset 'huge'"):
        synth.generate("unused", "huge")


def test_world_val_and_test_unknown_chains_are_disjoint():
    w = synth.make_world(0)
    assert len(w.known) == 25 and len(w.unknown_val) + len(w.unknown_test) >= 30
    val, test = {c.name for c in w.unknown_val}, {c.name for c in w.unknown_test}
    known = {c.name for c in w.known}
    assert not val & test and not (val | test) & known and OTHER not in known | val | test
    assert all(n.isascii() and n.isalnum() for n in known | val | test)
    for c in w.lookalikes("val") + w.lookalikes("test"):
        target = w.chain(c.lookalike_of)
        assert target.known and c.logo_font == target.logo_font and c.emblem == target.emblem
        diff = sum(a != b for a, b in zip(c.wordmark, target.wordmark)) + abs(len(c.wordmark) - len(target.wordmark))
        assert diff <= 1
    assert synth.make_world(0) == w and synth.make_world(1) != w


def test_tiny_splits_labels_and_manifest(tiny):
    rows = _manifest(tiny)
    files = sorted(p.relative_to(tiny).as_posix() for p in tiny.rglob("*.jpg"))
    assert sorted(r["path"] for r in rows) == files  # one row per file
    cfg = synth.PRESETS["tiny"]
    assert len(rows) == cfg.total
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    known = sorted(p.name for p in (tiny / "train").iterdir())
    assert len(known) == 25 and OTHER not in known
    for s, rs in by_split.items():
        assert {r["label"] for r in rs} - {OTHER} == set(known)
        for r in rs:
            assert r["path"] == f"{s}/{r['label']}/{Path(r['path']).name}"
        ids = [int(Path(r["path"]).stem) for r in rs]
        assert sorted(ids) == list(range(len(rs)))  # unique numeric ids within a split
    other = {s: [r for r in by_split[s] if r["label"] == OTHER] for s in ("val", "test")}
    assert len(other["test"]) == cfg.test_other and sum(r["label"] != OTHER for r in by_split["test"]) == cfg.test_other
    assert not {r["chain"] for r in other["val"]} & {r["chain"] for r in other["test"]}
    for s in ("val", "test"):
        assert any(r["lookalike"] == "true" and r["lookalike_of"] in known for r in other[s])
        lif = [r for r in other[s] if r["logo_in_frame"] == "true"]
        assert lif and all(r["second_chain"] in known and r["second_receipt"] == "logo_in_frame" for r in lif)
    for s in ("train", "val", "test"):  # clutter at the same share for known and Other photos (no confound)
        for group in ([r for r in by_split[s] if r["label"] != OTHER], other.get(s, [])):
            if group:
                share = sum(r["logo_in_frame"] == "true" for r in group) / len(group)
                assert abs(share - cfg.logo_in_frame_frac) <= 0.5 / len(group) + 1e-9, (s, share)
    assert any(r["logo_in_frame"] == "true" and r["label"] != OTHER for r in rows)
    for col in synth.photo.PARAM_NAMES + ("lookalike_kind", "store", "template"):
        assert col in rows[0]
    im = Image.open(tiny / rows[0]["path"])
    assert im.size == (cfg.width, cfg.height) and im.mode == "RGB"
    assert synth.is_complete(tiny, "tiny", 0)


def test_photograph_each_distortion_alone_and_difficulty():
    w = synth.make_world(0)
    receipt = synth.render_receipt(w.known[0], np.random.default_rng(0), width=120)
    assert receipt.mode == "RGBA" and receipt.height > receipt.width
    base, p0 = synth.photograph(receipt, np.random.default_rng(1), size=(96, 128), only="noise", difficulty=0.0)
    for name in synth.DISTORTIONS:
        img, p = synth.photograph(receipt, np.random.default_rng(1), size=(96, 128), only=name)
        assert img.size == (96, 128) and set(p) == set(p0)
        if name == "rotation":
            assert p["rotation_deg"] != 0 and p["blur"] == "none" and p["noise_sigma"] == 0
    flat, p = synth.photograph(receipt, np.random.default_rng(2), size=(96, 128), difficulty=0.0)
    assert p["rotation_deg"] == 0 and p["occluders"] == "" and p["bg_kind"] == "plain"
    with pytest.raises(ValueError, match="only="):
        synth.photograph(receipt, np.random.default_rng(1), only="sepia")


def test_presets_and_dataset_dir(tmp_path):
    q, p = synth.PRESETS["quick"], synth.PRESETS["paper"]
    assert p.split_sizes()["train"] + p.split_sizes()["val"] == 45_000 and p.split_sizes()["test"] == 20_000
    assert max(p.width, p.height) >= 1000
    for cfg in synth.PRESETS.values():
        assert cfg.test_other == cfg.n_known * cfg.test_per_class  # test is half Other
    assert q.total < 6000
    assert synth.dataset_dir("tiny", 3, tmp_path) == tmp_path / "synth-tiny-seed3"
    with pytest.raises(ValueError, match="unknown synth preset"):
        synth.generate(tmp_path / "x", "huge")


def test_chains_vary_within_and_lookalikes_copy_logo_or_template_family():
    w = synth.make_world(0)
    for c in w.known:
        assert 2 <= len(c.stores) <= 5 and 2 <= len(c.templates) <= 3
        assert len({s.address for s in c.stores}) >= 2  # several shops, not one address on every receipt
        assert c.templates[0] != c.templates[1]
    kinds = [c.lookalike_kind for c in w.lookalikes("test")]
    assert set(kinds) == set(synth.chains.LOOKALIKE_KINDS)
    for c in w.lookalikes("val") + w.lookalikes("test"):
        target = w.chain(c.lookalike_of)
        family_same = all(getattr(c, f) == getattr(target, f) for f in synth.chains.TEMPLATE_FAMILY)
        assert family_same == (c.lookalike_kind == "logo_and_template")
        assert c.legal_name != target.legal_name and {s.address for s in c.stores}.isdisjoint(s.address for s in target.stores)
    # a receipt is one store's and one template's; forcing them prints that store's address
    chain = w.known[0]
    a = synth.render_receipt(chain, np.random.default_rng(5), width=120, store=0, template=0)
    b = synth.render_receipt(chain, np.random.default_rng(5), width=120, store=1, template=1)
    assert (a.info["store"], a.info["template"], b.info["store"], b.info["template"]) == (0, 0, 1, 1)
    assert np.asarray(a).shape != np.asarray(b).shape or (np.asarray(a) != np.asarray(b)).any()
    with pytest.raises(ValueError, match="store=9"):
        synth.render_receipt(chain, np.random.default_rng(5), store=9)


def _quad(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split()]).reshape(4, 2)


def test_photo_lists_its_distortions_and_where_header_and_body_lie():
    w = synth.make_world(0)
    receipt = synth.render_receipt(w.known[1], np.random.default_rng(0), width=120)
    for name in ("curl", "glare", "faded", "rotation"):
        img, p = synth.photograph(receipt, np.random.default_rng(1), size=(96, 128), only=name)
        assert p["distortions"] == name
    plain, _ = synth.photograph(receipt, np.random.default_rng(1), size=(96, 128), only="noise", difficulty=0.0)
    for name in ("curl", "glare", "faded"):  # each changes the picture
        img, _ = synth.photograph(receipt, np.random.default_rng(1), size=(96, 128), only=name)
        assert np.abs(np.asarray(img, float) - np.asarray(plain, float)).mean() > 0.5, name
    img, p = synth.photograph(receipt, np.random.default_rng(1), size=(96, 128), only="blur")
    header, body = _quad(p["header_quad"]), _quad(p["body_quad"])
    assert header[:, 1].max() <= body[:, 1].min() + 1e-3  # upright: the header above the body
    assert np.allclose(header[2:][::-1], body[:2], atol=1e-3)  # they share the edge at the logo's bottom
    assert 0 <= header.min() and header.max() <= 1
    # the header band is where the ink of the logo is: darker than the same-size band of blank desk beside it
    a = np.asarray(img.convert("L"), float)
    ys = (header[:, 1].min() * 128, header[:, 1].max() * 128)
    xs = (header[:, 0].min() * 96, header[:, 0].max() * 96)
    band = a[int(ys[0]):int(ys[1]) + 1, int(xs[0]):int(xs[1]) + 1]
    assert band.std() > 10  # print in it, not a uniform surface


def test_distortion_shares_follow_the_difficulty_and_known_vs_other_names_gaps():
    import pandas as pd

    shares = synth.distortion_shares((0.0, 1.0), n=24, config=SMALL)
    assert shares.loc["rotation", "difficulty 0"] == 0 and shares.loc["rotation", "difficulty 1"] > 0.7
    assert (shares["difficulty 1"] >= shares["difficulty 0"])[list(synth.DISTORTIONS)].all()
    m = pd.DataFrame({"split": ["test"] * 200, "label": ["A"] * 100 + [OTHER] * 100,
                      "distortions": ["blur"] * 100 + [""] * 50 + ["blur"] * 50, "logo_in_frame": [False] * 200,
                      "second_receipt": ["none"] * 200, "extra_receipts": [0] * 200, "top_zoom": [False] * 200,
                      "scale": [1.0] * 200, "rotation_deg": [0.0] * 200, "occluded_frac": [0.0] * 200})
    table = synth.known_vs_other(m)
    assert table.loc["blur", "differs"] and table.loc["blur", "known"] == 1 and table.loc["blur", "Other"] == 0.5
    assert not table.loc["noise", "differs"] and not table.loc["logo in frame", "differs"]
    with pytest.raises(ValueError, match="no photos"):
        synth.known_vs_other(m, splits=("val",))
