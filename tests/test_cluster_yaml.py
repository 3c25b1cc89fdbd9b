"""cluster.yaml and cluster-local.yaml pass Ray's own cluster-launcher schema check (no cloud)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
util = pytest.importorskip("ray.autoscaler._private.util")


def _validated(raw: dict) -> dict:
    """What `ray up` does before it touches a provider: merge the defaults, then validate."""
    config = util.prepare_config(copy.deepcopy(raw))
    util.validate_config(config)
    return config


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_files_pass_rays_schema(name):
    raw = yaml.safe_load((ROOT / name).read_text())
    config = _validated(raw)
    assert config["head_node_type"] in config["available_node_types"]
    # every node installs this package from the synced checkout and starts Ray
    assert any("pip install" in c and "photoz-study" in c for c in raw["setup_commands"])
    assert "~/photoz-study" in raw["file_mounts"]
    assert any("ray start --head" in c for c in raw["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP" in c for c in raw["worker_start_ray_commands"])


def test_aws_cluster_has_a_gpu_worker_type():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["provider"]["type"] == "aws"
    worker = raw["available_node_types"]["ray.worker.gpu"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families
    assert raw["max_workers"] >= worker["max_workers"] >= 1


def test_local_cluster_is_on_prem():
    raw = yaml.safe_load((ROOT / "cluster-local.yaml").read_text())
    assert raw["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]


def test_schema_check_catches_mistakes():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    typo = {**raw, "setup_comands": raw["setup_commands"]}
    with pytest.raises(Exception, match="setup_comands"):
        _validated(typo)
    wrong_type = copy.deepcopy(raw)
    wrong_type["available_node_types"]["ray.worker.gpu"]["min_workers"] = "two"
    with pytest.raises(Exception, match="is not of type 'integer'"):
        _validated(wrong_type)
