"""Shipped prompt sets (source packaged), plain-text prompt files (format text) and the GenEval-style
training prompt generator (source geneval_generated)."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from opgrpo_stages.geneval import prompts as G
from opgrpo_stages.prompts import packaged as P
from opgrpo_stages.errors import ArtifactError, ConfigError
from opgrpo_stages.formats import prompts as prompts_fmt

# sha256 of the upstream files in shared/data (djghosh13/geneval, yifan123/flow_grpo), recorded when copied;
# paths under opgrpo_stages/, each set's LICENSE and PROVENANCE.md in its first two folders
SHA256 = {
    "geneval/data/evaluation_metadata.jsonl": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
    "data/flow_grpo/geneval/test_metadata.jsonl": "cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28",
    "data/flow_grpo/geneval_unseen_objects/test_metadata.jsonl":
        "174536b49af23b0e2abc4e3215fce5d375de13d6040a50642709240a76dc1a24",
    "data/flow_grpo/ocr/test.txt": "4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc",
}
COUNTS = {"geneval": 553, "flow_grpo_geneval": 2212, "geneval_unseen": 1024, "ocr_test": 1018,
          **{f"t2i_compbench_{c}": 300 for c in P.T2I_COMPBENCH_CATEGORIES}}


def _shape(meta: dict):
    """Structure of a GenEval record: top-level keys and, per include/exclude entry, its keys and the
    types of its values (the position entry is a [relation, 0] pair)."""
    def entry(o):
        return tuple(sorted((k, type(v).__name__, len(v) if isinstance(v, list) else None) for k, v in o.items()))

    return (tuple(sorted(k for k in meta if k != "id")),
            tuple(entry(o) for o in meta["include"]), tuple(entry(o) for o in meta.get("exclude", [])))


@pytest.mark.parametrize("rel", sorted(SHA256))
def test_shipped_files_are_the_upstream_files(rel):
    assert hashlib.sha256((P.ROOT / rel).read_bytes()).hexdigest() == SHA256[rel]
    folder = P.ROOT.joinpath(*Path(rel).parts[:2])
    assert (folder / "LICENSE").read_text().startswith("MIT License")
    assert Path(rel).name in (folder / "PROVENANCE.md").read_text()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_packaged_sets_load_with_their_counts_and_unique_ids(name):
    items = P.load(name)
    assert len(items) == COUNTS[name]
    assert len({p["id"] for p in items}) == len(items) and items[0]["id"] == f"{name}-00000"
    assert all(p["prompt"].strip() for p in items)


def test_packaged_geneval_is_the_official_553_and_flow_grpo_holds_each_4_times():
    official = P.load("geneval")
    assert Counter(p["tag"] for p in official) == {"position": 100, "color_attr": 100, "two_object": 99,
                                                   "colors": 94, "single_object": 80, "counting": 80}
    strip = lambda p: json.dumps({k: v for k, v in p.items() if k != "id"}, sort_keys=True)  # noqa: E731
    fg = Counter(strip(p) for p in P.load("flow_grpo_geneval"))
    assert set(fg) == {strip(p) for p in official} and set(fg.values()) == {4}


def test_ocr_test_set_is_tagged_with_its_quoted_target():
    from opgrpo_stages.rewards.ocr import target_text

    items = P.load("ocr_test")
    assert all(p["tag"] == "ocr" and p["ocr_text"] == target_text(p["prompt"]) for p in items)
    assert items[0]["ocr_text"] == "Spring Collection 2024"


def test_t2i_compbench_sets_are_tagged_with_their_category():
    items = P.load("t2i_compbench_3d_spatial")
    assert {p["tag"] for p in items} == {"3d_spatial"} and "ocr_text" not in items[0]


def test_schema_names_every_packaged_set():
    import yaml

    schema = yaml.safe_load((P.ROOT / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["definitions"]["prompt_set"]["properties"]["name"]["enum"]) == set(P.PACKAGED)


def test_unknown_packaged_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown packaged prompt set 'genevall'"):
        P.load("genevall")


def test_read_text_lines_ids_and_tags(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text('A sign that says "Open Late"\n\n  a cat on a mat  \nquotes "" empty\n')
    items = prompts_fmt.read_text(f)
    assert [p["id"] for p in items] == ["mine-00000", "mine-00002", "mine-00003"]
    assert items[0] == {"id": "mine-00000", "prompt": 'A sign that says "Open Late"', "tag": "ocr",
                        "ocr_text": "Open Late"}
    assert items[1] == {"id": "mine-00002", "prompt": "a cat on a mat", "tag": "none"}
    assert items[2]["tag"] == "none"
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ArtifactError, match="no prompts"):
        prompts_fmt.read_text(tmp_path / "empty.txt")
    with pytest.raises(ArtifactError, match="missing"):
        prompts_fmt.read_text(tmp_path / "absent.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 sign\n")
    with pytest.raises(ArtifactError, match="not UTF-8"):
        prompts_fmt.read_text(tmp_path / "latin1.txt")


def _make(run_cfg, tmp_path, which, pc, extra=None):
    from opgrpo_stages.stages.prompts import make_prompts

    cfg = {**run_cfg, "prompts": {which: pc, **(extra or {})}}
    out = tmp_path / f"{which}.jsonl"
    make_prompts(cfg, which, out)
    return prompts_fmt.read(out)


def test_prompts_stage_sources(run_cfg, tmp_path):
    from opgrpo_stages import config as C

    f = tmp_path / "ocr_train.txt"
    f.write_text('a mug with "hello"\na poster reading "Big Sale"\n')
    got = _make(run_cfg, tmp_path, "train", {"source": "file", "path": str(f), "format": "text"})
    assert [(p["id"], p["ocr_text"]) for p in got] == [("ocr_train-00000", "hello"), ("ocr_train-00001", "Big Sale")]
    with pytest.raises(ConfigError, match="format: text"):
        _make(run_cfg, tmp_path, "train", {"source": "file", "path": str(f)})
    got = _make(run_cfg, tmp_path, "heldout", {"source": "packaged", "name": "geneval"})
    assert len(got) == 553 and got == P.load("geneval")
    got = _make(run_cfg, tmp_path, "train", {"source": "geneval_generated", "n": 40, "seed": 5})
    assert [p["id"] for p in got][:2] == ["train-00000", "train-00001"]
    assert [{k: v for k, v in p.items() if k != "id"} for p in got] == G.generate(40, 5)
    # the schema accepts the new keys and rejects a misspelt name
    C.validate({"prompts": {"train": {"source": "geneval_generated", "n": 10, "tags": ["counting"]},
                            "heldout": {"source": "packaged", "name": "ocr_test"}}})
    with pytest.raises(ConfigError):
        C.validate({"prompts": {"heldout": {"source": "packaged", "name": "ocr"}}})


# --- the generator --------------------------------------------------------------------------------

def test_prompt_formula_reproduces_every_official_prompt():
    assert all(G.prompt_text(m) == m["prompt"] for m in G.test_metadata())
    assert len(G.object_names()) == 80


def test_generated_records_have_the_official_structure_per_tag():
    official = {}
    for m in G.test_metadata():
        official.setdefault(m["tag"], set()).add(_shape(m))
    gen = G.generate(3000, 0)
    assert {m["tag"] for m in gen} == set(G.TRAIN_TAGS)
    for m in gen:
        assert _shape(m) in official[m["tag"]], m
        assert m["prompt"] == G.prompt_text(m)
        # same key order as the official lines too (tag, include, [exclude], prompt)
        assert list(m) == [k for k in ("tag", "include", "exclude", "prompt") if k in m]
    names = set(G.object_names())
    for m in gen:
        classes = [o["class"] for o in m["include"]]
        assert set(classes) <= names and len(set(classes)) == len(classes)
        if m["tag"] in ("colors", "color_attr"):
            assert "person" not in classes and all(o["color"] in G.COLORS for o in m["include"])
            assert len({o["color"] for o in m["include"]}) == len(m["include"])
        if m["tag"] == "counting":
            (inc,), (exc,) = m["include"], m["exclude"]
            assert inc["count"] in (2, 3, 4) and exc == {"class": inc["class"], "count": inc["count"] + 1}
        if m["tag"] == "position":
            assert m["include"][1]["position"][0] in G.POSITIONS and m["include"][1]["position"][1] == 0


def test_generated_prompts_are_distinct_and_never_a_test_prompt_or_its_variant(tmp_path):
    gen = G.generate(50_000, 7)
    prompts = [m["prompt"] for m in gen]
    assert len(set(prompts)) == len(prompts) == 50_000
    test = {m["prompt"] for m in G.test_metadata()}
    assert not test & set(prompts)
    # variants: the other object order, and the mirrored relation, of test prompts
    variants = set()
    mirror = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for m in G.test_metadata():
        inc = m["include"]
        if m["tag"] in ("two_object", "color_attr"):
            variants.add(G.prompt_text({**m, "include": inc[::-1]}))
        if m["tag"] == "position":
            (b, a), rel = inc, inc[1]["position"][0]
            for anchor, obj in ((b, a), (a, b)):
                for r in (rel, mirror[rel]):
                    inc2 = [{"class": anchor["class"], "count": 1},
                            {"class": obj["class"], "count": 1, "position": [r, 0]}]
                    variants.add(G.prompt_text({"tag": "position", "include": inc2}))
    assert len(variants) > 500 and not variants & set(prompts)
    # every counting/colors/two_object prompt outside the test scenes is used when n is this large
    tags = Counter(m["tag"] for m in gen)
    assert (tags["counting"], tags["colors"], tags["two_object"]) == (G.available("counting"), G.available("colors"),
                                                                      G.available("two_object"))
    assert tags["counting"] == 240 - 80
    # the written file parses with the format's reader
    prompts_fmt.write(tmp_path / "t.jsonl", [{**m, "id": f"t-{i}"} for i, m in enumerate(gen[:100])])
    assert len(prompts_fmt.read(tmp_path / "t.jsonl")) == 100


def test_generator_is_deterministic_per_seed_and_balances_tags():
    a, b, c = G.generate(500, 1), G.generate(500, 1), G.generate(500, 2)
    assert a == b and a != c
    assert Counter(m["tag"] for m in a) == {t: 100 for t in G.TRAIN_TAGS}
    only = G.generate(200, 0, ["counting", "position"])
    assert Counter(m["tag"] for m in only) == {"counting": 100, "position": 100}
    # a tag short of its share gives all it has (160 counting prompts), the rest goes to the others
    assert Counter(m["tag"] for m in G.generate(400, 0, ["counting", "colors"])) == {"counting": 160, "colors": 240}


def test_generator_errors():
    with pytest.raises(ConfigError, match="single_object"):
        G.generate(10, 0, ["single_object"])
    with pytest.raises(ConfigError, match="exceeds"):
        G.generate(161, 0, ["counting"])


@pytest.mark.parametrize("preset", ["sd35_geneval.yaml", "sd35_ocr.yaml", "wan21_ocr.yaml"])
def test_presets_build_their_shipped_prompt_sets(preset, tmp_path):
    from opgrpo_stages import config as C
    from opgrpo_stages.stages.prompts import make_prompts

    cfg = C.resolve_run(C.load(Path(__file__).resolve().parents[1] / "presets" / preset), "flowgrpo")
    built = {}
    for which in ("train", "heldout"):
        if cfg["prompts"][which]["source"] in ("packaged", "geneval_generated"):
            make_prompts(cfg, which, tmp_path / f"{which}.jsonl")
            built[which] = prompts_fmt.read(tmp_path / f"{which}.jsonl")
    if preset == "sd35_geneval.yaml":
        assert len(built["heldout"]) == 553 and cfg["eval"]["samples_per_prompt"] == 4
        assert len(built["train"]) == 10_000
        assert not {p["prompt"] for p in built["train"]} & {p["prompt"] for p in built["heldout"]}
    else:
        assert len(built["heldout"]) == 1018 and {p["tag"] for p in built["heldout"]} == {"ocr"}
