"""The SQLite registry: atomic changes, hashes, matching, the pipeline's view of it."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.gallery import GalleryProvider
from edge_agent.registry import Person, Registry, RegistryError


def unit(rng, n: int = 1, dim: int = 128) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_upsert_remove_hash_and_match(tmp_path):
    rng = np.random.default_rng(0)
    reg = Registry(tmp_path / "r.db")
    a, b = unit(rng, 2), unit(rng, 1)
    reg.upsert_person("ann", a, "sig")
    reg.upsert_person("bob", b, "sig")
    reg.upsert_person("old", unit(rng), "other-model")
    h = reg.content_hash()
    gallery = reg.gallery("sig")
    assert sorted(gallery.names) == ["ann", "bob"]  # other model's embeddings are never matched
    idx, score = gallery.match(np.concatenate([a[1:], b]))
    assert [gallery.names[i] for i in idx] == ["ann", "bob"] and np.allclose(score, 1, atol=1e-5)
    assert Registry(tmp_path / "r.db").content_hash() == h
    assert reg.remove_person("ann") and not reg.remove_person("ann")
    assert reg.content_hash() != h and reg.count() == 2


def test_bad_embeddings_change_nothing(tmp_path):
    reg = Registry(tmp_path / "r.db")
    with pytest.raises(RegistryError):
        reg.upsert_person("nan", np.full((1, 128), np.nan, np.float32), "sig")
    with pytest.raises(RegistryError):
        reg.upsert_person(" ", np.ones((1, 128), np.float32), "sig")
    assert reg.count() == 0


def test_replace_all_is_atomic(tmp_path):
    rng = np.random.default_rng(1)
    reg = Registry(tmp_path / "r.db")
    reg.upsert_person("ann", unit(rng), "sig")
    before = reg.content_hash()
    people = [Person(f"id{i}", f"p{i}", unit(rng), "sig") for i in range(50)]
    people.append(Person("dup", "p3", unit(rng), "sig"))  # a duplicate name: the whole swap is refused
    with pytest.raises(RegistryError):
        reg.replace_all(people, version=7)
    assert reg.content_hash() == before and reg.version == 0
    reg.replace_all(people[:-1], version=7)
    assert reg.count() == 50 and reg.version == 7


def test_gallery_provider_sees_other_connections(tmp_path):
    rng = np.random.default_rng(2)
    writer = Registry(tmp_path / "r.db")
    provider = GalleryProvider(Registry(tmp_path / "r.db"), "sig", poll_s=0)
    assert len(provider.current()) == 0
    writer.upsert_person("ann", unit(rng), "sig")
    assert provider.current().names == ["ann"]
    writer.remove_person("ann")
    assert len(provider.current()) == 0


def test_person_scores_take_each_persons_best_template(tmp_path):
    rng = np.random.default_rng(3)
    reg = Registry(tmp_path / "r.db")
    ann, bob = unit(rng, 3), unit(rng, 2)
    reg.upsert_person("ann", ann, "sig")
    reg.upsert_person("bob", bob, "sig")
    gallery = reg.gallery("sig")
    queries = np.concatenate([ann[2:], bob[:1], unit(rng)])
    scores = gallery.person_scores(queries)
    expected = np.stack([(queries @ (ann if n == "ann" else bob).T).max(axis=1) for n in gallery.names], axis=1)
    assert scores.shape == (3, 2) and np.allclose(scores, expected, atol=1e-6)
