"""Tests for the dictd-backed benchmark tasks (bench/data/dictd.py,
freedict.py, gcide_lm.py): the readers on hand-written entries (always),
then on Debian's dict-freedict-deu-eng and dict-gcide when installed
(skipped otherwise), and the task builders on small slices."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data.dictd import DictdDatabase, decode_b64, read_index  # noqa: E402
from bench.data.freedict import (  # noqa: E402
    FreeDictConfig,
    FreeDictEntry,
    build_freedict_task,
    freedict_available,
    parse_entry,
    read_freedict,
    word_features,
)
from bench.data.text import tokens  # noqa: E402
from bench.data.gcide_lm import (  # noqa: E402
    EOS,
    UNK,
    GcideLMConfig,
    _contexts,
    build_gcide_lm_task,
    build_vocabulary,
    clean_entry,
    gcide_available,
    lm_tokens,
    read_gcide_texts,
)

needs_freedict = pytest.mark.skipif(not freedict_available(), reason="dict-freedict-deu-eng not installed")
needs_gcide = pytest.mark.skipif(not gcide_available(), reason="dict-gcide not installed")

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(v: int) -> str:
    out = ""
    while True:
        out = _B64[v % 64] + out
        v //= 64
        if not v:
            return out


# ---------------------------------------------------------------------------
# dictd reader
# ---------------------------------------------------------------------------


def test_decode_b64():
    assert decode_b64("A") == 0
    assert decode_b64("B0") == 1 * 64 + 52
    assert decode_b64("GHAt") == ((6 * 64 + 7) * 64 + 0) * 64 + 45
    with pytest.raises(ValueError, match="base-64"):
        decode_b64("B-")


def test_dictd_database_round_trip(tmp_path):
    entries = {"alpha": "Alpha\nfirst letter\n", "beta": "Beta\nsecond letter\n", "00-database-url": "x\n"}
    data, index = b"", []
    for head, text in entries.items():
        raw = text.encode()
        index.append(f"{head}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    index.append(f"alpha2\t{_b64(0)}\t{_b64(len(entries['alpha']))}")  # a second spelling, same entry
    (tmp_path / "t.index").write_text("\n".join(index) + "\n")
    with gzip.open(tmp_path / "t.dict.dz", "wb") as f:
        f.write(data)
    assert [e.headword for e in read_index(tmp_path / "t.index")] == ["alpha", "beta", "alpha2"]
    assert len(read_index(tmp_path / "t.index", metadata=True)) == 4
    db = DictdDatabase.open(tmp_path, "t", "dict-test")
    assert [t for _, t in db.entries()] == [entries["alpha"], entries["beta"]]
    assert len(list(db.entries(unique=False))) == 3
    with pytest.raises(FileNotFoundError, match="apt-get install dict-nothing"):
        DictdDatabase.open(tmp_path, "missing", "dict-nothing")


# ---------------------------------------------------------------------------
# FreeDict
# ---------------------------------------------------------------------------


def test_freedict_parse_entry_hand_written():
    text = ("Abflugzeit /ˈapflˌuːɡtsaɪt/ <fem, n, sg>\n [transp.] time of departure <n>, departure time <n>\n"
            "   Synonyms: {Abfahrtszeit}, {Abflugszeit}\n\n see: {Abfahrtszeiten}\n")
    assert parse_entry(text) == FreeDictEntry("Abflugzeit", "fem, n, sg", "time of departure, departure time")
    text = ('Müll /mˈyl/ <masc, n, sg>\n [Dt.]  [Ös.] refuse <n>, rubbish <n> [Br.] , garbage <n> [Am.]\n'
            '      "den Müll hinaustragen"  - take out the rubbish\n')
    assert parse_entry(text) == FreeDictEntry("Müll", "masc, n, sg", "refuse, rubbish, garbage")
    assert parse_entry("Kopf\n   Synonym: {Haupt}\n") is None
    assert parse_entry("\n") is None


def test_word_features_are_stable_and_shared():
    f = word_features("radio", 18)
    # "<radio>" itself plus 3-, 4- and 5-grams with the boundary markers.
    assert len(f) == 1 + 5 + 4 + 3 and all(0 <= i < 2**18 for i in f)
    assert f == word_features("radio", 18)               # crc32: the same in every process
    assert set(word_features("radios", 18)) & set(f)      # shared n-grams
    assert word_features("radio", 10) != f


def test_freedict_case_features():
    from bench.data.freedict import _case_features

    mask = (1 << 18) - 1
    assert _case_features("stand", mask) == []
    cap, exact = _case_features("Stand", mask)
    assert cap == _case_features("Haus", mask)[0] and exact != _case_features("Haus", mask)[1]
    assert len(_case_features("eBay", mask)) == 1  # upper case inside: the exact spelling only


@pytest.fixture(scope="module")
def freedict_entries():
    if not freedict_available():
        pytest.skip("dict-freedict-deu-eng not installed")
    return read_freedict()


@needs_freedict
def test_freedict_real_entries(freedict_entries):
    by_head: dict[str, list[FreeDictEntry]] = {}
    for e in freedict_entries:
        by_head.setdefault(e.headword, []).append(e)
    assert len(freedict_entries) > 400_000
    assert {e.translation for e in by_head["Hausschlüssel"]} == {"front door key", "front door keys", "latchkey"}
    assert FreeDictEntry("Abflugzeit", "fem, n, sg", "time of departure, departure time") in by_head["Abflugzeit"]
    assert any(e.translation == "impermanence" for e in by_head["Unbeständigkeit"])
    assert any(e.translation.startswith("sleep with sb.") for e in by_head["mit jdm. ins Bett gehen"])


SLICE = FreeDictConfig(label_fraction=0.01, epochs=1, max_train=2_000, max_test=400, hash_bits=14,
                       batch_size=256, negatives=256)


@needs_freedict
def test_freedict_task_slice(freedict_entries):
    a = build_freedict_task(cfg=SLICE, entries=freedict_entries, log=lambda *_: None)
    b = build_freedict_task(cfg=SLICE, entries=freedict_entries, log=lambda *_: None)
    for name in ("weight", "train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    n = a.num_labels
    assert 1_500 < n < 5_000 and a.weight.shape == (n, 128) and a.weight.dtype == torch.float32
    assert torch.equal(a.bias, torch.zeros(n))
    assert a.train_x.shape == (2_000, 128) and a.train_y.shape == (2_000,) and a.train_y.dtype == torch.int64
    assert a.test_x.shape == (400, 128) and a.test_y.shape[0] == 400 and a.test_y.dtype == torch.int64
    assert int(a.train_y.min()) >= 0 and int(a.train_y.max()) < n
    assert int(a.test_y[:, 0].min()) >= 0 and int(a.test_y.max()) < n and int(a.test_y.min()) >= -1
    assert torch.isfinite(a.weight).all() and torch.isfinite(a.test_x).all()
    assert torch.unique(a.weight, dim=0).shape[0] == n  # every label its own row (case variants too)
    # Most test queries' labels have no training query, neither in the
    # model's training pairs nor in the fit() pairs (recomputed here).
    unseen = torch.tensor(a.meta["test_unseen"])
    assert unseen.float().mean() > 0.6
    in_fit = torch.zeros(n, dtype=torch.bool)
    in_fit[a.train_y] = True
    recomputed = ~((a.test_y >= 0) & in_fit[a.test_y.clamp(min=0)]).any(1)
    assert torch.equal(recomputed, torch.tensor(a.meta["test_unseen_fit"]))
    assert bool((recomputed | ~unseen).all())  # unseen by the model implies unseen by fit()
    # A test query's labels are exactly the slice's headwords with an entry of that translation text.
    names = a.meta["labels"]
    label_set = set(names)
    texts = [(e.headword, " ".join(tokens(e.translation))) for e in freedict_entries if e.headword in label_set]
    for row in (0, 1, 2):
        text = a.meta["test_text"][row]
        want = {h for h, t in texts if t == text}
        assert {names[i] for i in a.test_y[row].tolist() if i >= 0} == want


# ---------------------------------------------------------------------------
# GCIDE language model
# ---------------------------------------------------------------------------

AFFECT = '''Affect \\Af*fect"\\, v. t. [imp. & p. p. {Affected}; p. pr. & vb.
   n. {Affecting}.] [L. affectus, p. p. of afficere to affect by
   active agency; ad + facere to make: cf. F. affectere. See {Fact}.]
   1. To act upon; to produce an effect or change upon.
      [1913 Webster]

            As might affect the earth with cold heat. --Milton.
      [1913 Webster]
'''


def test_gcide_clean_entry_and_tokens():
    text = clean_entry(AFFECT)
    assert text == ("Affect , v. t. 1. To act upon; to produce an effect or change upon. "
                    "As might affect the earth with cold heat.")
    assert lm_tokens("Don't stop, Affect!") == ["don't", "stop", ",", "affect", "!"]
    vocab = build_vocabulary([["b", "a", "b"], ["c", "a", "b"]], 4)
    assert vocab == [EOS, UNK, "b", "a"]


def test_gcide_contexts_stop_at_entry_boundaries():
    eos = 0
    stream = torch.tensor([0, 5, 6, 7, 0, 8, 9])
    ctx = _contexts(stream, torch.tensor([1, 3, 5, 6]), 3, eos)
    assert ctx.tolist() == [[0, 0, 0], [0, 5, 6], [0, 0, 0], [0, 0, 8]]


@needs_gcide
def test_gcide_real_entries():
    texts = dict((t.split(" ", 1)[0], t) for _, t in read_gcide_texts())
    assert texts["Carelessly"] == "Carelessly , adv. In a careless manner."
    assert texts["Carelessness"].startswith("Carelessness , n. The quality or state of being careless;")
    assert len(texts) > 50_000


@needs_gcide
def test_gcide_lm_task_slice():
    cfg = GcideLMConfig(vocab_size=3_000, steps=4, batch_size=64, max_entries=3_000, max_train=2_000,
                        max_test=500, hidden=64)
    a = build_gcide_lm_task(cfg=cfg, log=lambda *_: None)
    b = build_gcide_lm_task(cfg=cfg, log=lambda *_: None)
    for name in ("weight", "bias", "train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.num_labels == 3_000 and a.weight.shape == (3_000, 128) and a.bias.shape == (3_000,)
    assert a.train_x.shape == (2_000, 128) and a.test_x.shape == (500, 128)
    assert a.train_y.dtype == torch.int64 and a.test_y.dtype == torch.int64 and a.test_y.dim() == 1
    for y in (a.train_y, a.test_y):
        assert int(y.min()) >= 0 and int(y.max()) < 3_000
        assert not (y == a.meta["vocabulary"].index(UNK)).any()
    assert a.meta["vocabulary"][:2] == [EOS, UNK] and "the" in a.meta["vocabulary"][:10]


# ---------------------------------------------------------------------------
# Wiring: bench/tasks.py problems, the cache, the command line
# ---------------------------------------------------------------------------


def test_command_line_accepts_the_new_tasks():
    from bench.__main__ import parse_args

    args = parse_args(["e2e", "accuracy", "--tasks", "freedict", "lm", "--lm-candidates", "64"])
    assert args.tasks == ["freedict", "lm"] and args.lm_candidates == 64 and args.freedict_candidates is None
    assert parse_args(["e2e"]).tasks is None  # the default set is unchanged (wordnet, minilm, synthetic)


@needs_gcide
def test_lm_problem_is_cached(tmp_path):
    from bench import tasks

    cfg = GcideLMConfig(vocab_size=2_000, steps=3, batch_size=32, max_entries=2_000, max_train=500,
                        max_test=200, hidden=32)
    first = tasks.lm_problem(cfg, cache_dir=tmp_path, log=lambda *_: None)
    assert first.name == "lm" and first.num_labels == 2_000 and first.dim == 128 and not first.setup["model_cached"]
    assert len(list(tmp_path.glob("gcide_lm-*.pt"))) == 1
    tasks._PROBLEMS.clear()
    again = tasks.lm_problem(cfg, cache_dir=tmp_path, log=lambda *_: None)
    assert again.setup["model_cached"]
    for name in ("weight", "bias", "train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    tasks._PROBLEMS.clear()


def _write_dictd(root: Path, name: str, entries: list[tuple[str, str]]) -> None:
    data, index = b"", []
    for head, text in entries:
        raw = text.encode()
        index.append(f"{head}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    (root / f"{name}.index").write_text("\n".join(index) + "\n")
    with gzip.open(root / f"{name}.dict.dz", "wb") as f:
        f.write(data)


def test_freedict_problem_on_a_fixture_database_is_cached(tmp_path):
    from bench import tasks

    words = "haus schlüssel tür fenster garten baum blume wasser feuer erde luft stein weg berg tal see".split()
    english = "house key door window garden tree flower water fire earth air stone path mountain valley lake".split()
    entries = []
    for i, (de, en) in enumerate(zip(words, english)):
        for j, (de2, en2) in enumerate(zip(words, english)):
            if i != j:  # compounds: "Hausschlüssel" /../ <n> -> "house key <n>"
                head = (de + de2).capitalize()
                entries.append((head.lower(), f"{head} /x/ <masc, n, sg>\n [tech.] {en} {en2} <n>\n see: {{{de}}}\n"))
    _write_dictd(tmp_path, "freedict-deu-eng", entries)
    cfg = FreeDictConfig(epochs=2, max_train=100, max_test=40, hash_bits=10, batch_size=32, negatives=16)
    first = tasks.freedict_problem(cfg, cache_dir=tmp_path / "cache", log=lambda *_: None, root=str(tmp_path))
    assert first.name == "freedict" and not first.setup["model_cached"] and first.num_labels == 16 * 15
    assert first.train_x.shape == (100, 128) and first.test_x.shape[0] == 40
    assert first.setup["test_labels_without_training_query"] > 0.5
    tasks._PROBLEMS.clear()
    again = tasks.freedict_problem(cfg, cache_dir=tmp_path / "cache", log=lambda *_: None, root=str(tmp_path))
    assert again.setup["model_cached"]
    for name in ("weight", "bias", "train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    tasks._PROBLEMS.clear()
