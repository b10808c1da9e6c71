import dataclasses

import pytest
from listing_dedup.config import DedupConfig, IndexConf, load_config
from listing_dedup.errors import ConfigError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_repo_profiles_load():
    local = load_config(["conf/local.yaml"])
    assert local.spark.master == "local[2]"
    assert local.embed.text.model == "minilm"
    cluster = load_config(["conf/cluster.yaml"])
    assert cluster.spark.conf["spark.task.resource.gpu.amount"] == "1"
    assert cluster.index.n_shards == 64


def test_later_files_override_earlier(tmp_path):
    a = write(tmp_path, "a.yaml", "match:\n  threshold: 0.8\n  min2_threshold: 0.5\nindex:\n  k: 10\n")
    b = write(tmp_path, "b.yaml", "match:\n  threshold: 0.9\n")
    cfg = load_config([a, b])
    assert cfg.match.threshold == 0.9
    assert cfg.match.min2_threshold == 0.5  # merged, not replaced
    assert cfg.index.k == 10


def test_set_overrides_and_yaml_values(tmp_path):
    cfg = load_config(
        [],
        [
            "match.threshold=0.7",
            "inb.thresholds=[0.8, 0.7]",
            "spark.conf.spark.sql.shuffle.partitions=3",
            "embed.text.device=cpu",
        ],
    )
    assert cfg.match.threshold == 0.7
    assert cfg.inb.thresholds == (0.8, 0.7)
    assert cfg.inb.rounds == 2
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "3"}
    assert cfg.embed.text.device == "cpu"


@pytest.mark.parametrize(
    "text, key",
    [
        ("match:\n  treshold: 0.8\n", "match.treshold"),
        ("bogus: 1\n", "bogus"),
        ("index:\n  k: 0\n", "index.k"),
        ("index:\n  k: ten\n", "index.k"),
        ("match:\n  threshold: 1.5\n", "match.threshold"),
        ("match:\n  threshold: 0.5\n  min2_threshold: 0.6\n", "match.min2_threshold"),
        ("embed:\n  text:\n    device: tpu\n", "embed.text.device"),
        ("inb:\n  thresholds: [0.8, 3]\n", "inb.thresholds[1]"),
        ("match: [1, 2]\n", "match"),
        ("guard:\n  group_margin: -0.1\n", "guard.group_margin"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config([p])
    assert f"'{key}'" in str(e.value)


def test_bad_set_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["match.threshold"])
    with pytest.raises(ConfigError, match="'match.nope'"):
        load_config([], ["match.nope=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([write(tmp_path, "x.yaml", "a: [1,\n")])


def test_config_is_frozen_and_serialises():
    cfg = DedupConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.match.threshold = 0.1  # type: ignore[misc]
    assert '"threshold": 0.75' in cfg.to_json()


@pytest.mark.parametrize(
    "n, expected",
    [(0, 1), (100, 2), (1999, 51), (10_000, 256), (1_000_000, 4000)],
)
def test_lists_for_auto(n, expected):
    # auto: round(4*sqrt(n)), capped so every list has >= 39 training points
    assert IndexConf().lists_for(n) == expected


def test_lists_for_exact_and_fixed():
    assert IndexConf(exact_below=5000).lists_for(4999) == 1
    assert IndexConf(nlist=64).lists_for(100_000) == 64
    assert IndexConf(nlist=64).lists_for(1000) == 25  # 1000 // 39


def test_lists_for_list_rows():
    # about list_rows rows a list: 100k / 256 = 390.6 -> 391; 1M -> 3907 (4*sqrt would give 4000)
    assert IndexConf(list_rows=256).lists_for(100_000) == 391
    assert IndexConf(list_rows=256, train_sample=160_000).lists_for(1_000_000, 160_000) == 3907
    # still capped by the sample: 100k sample rows / 39 = 2564 lists at most
    assert IndexConf(list_rows=256).lists_for(1_000_000, 100_000) == 2564
    assert IndexConf(list_rows=256, nlist=64).lists_for(100_000) == 64  # an explicit nlist wins


@pytest.mark.parametrize(
    "value, stages",
    [
        ("", ""),
        ("write", "write"),
        ("embed,search,write", "embed,search,write"),
        ("[search, embed]", "search,embed"),
        ("' write , embed,write'", "write,embed"),
    ],
)
def test_fail_once_stage_takes_one_stage_or_several(value, stages):
    from listing_dedup.faults import maybe_fail_once

    cfg = load_config([], [f"testing.fail_once_stage={value}"])
    assert cfg.testing.fail_once_stage == stages
    assert '"fail_once_stage": "' + stages + '"' in cfg.to_json()
    maybe_fail_once("embed", stages)  # outside a Spark task nothing is injected


@pytest.mark.parametrize("value", ["nope", "embed,nope", "[embed, 1]", "5"])
def test_fail_once_stage_rejects_unknown_stages(value):
    with pytest.raises(ConfigError, match="'testing.fail_once_stage'"):
        load_config([], [f"testing.fail_once_stage={value}"])
