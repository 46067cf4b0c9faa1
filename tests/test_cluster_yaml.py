"""`cluster.yaml` stays launchable and safe, and docs/cluster.md's commands stay true.

Ray's own checks run on the file: `prepare_config` (defaults merged, setup commands
merged, per-type worker bounds filled) and `validate_config` (Ray's JSON schema plus its
cross-field rules), the offline part of what `ray up` does before it contacts AWS. So a
Ray upgrade that no longer accepts the file fails here, not on someone's first `ray up`.
Nothing here imports boto3 or reaches the network.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILE = ROOT / "cluster.yaml"
DOCS_FILE = ROOT / "docs" / "cluster.md"
GPU_FAMILIES = ("g", "p")  # EC2 GPU instance families used here: g5, g6, p4d, p5...
CREDENTIAL_PATTERNS = (
    r"aws_access_key_id", r"aws_secret_access_key", r"aws_session_token",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", r"password", r"PRIVATE KEY",
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture(scope="module")
def prepared(config: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(config))


def _workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: node for name, node in config["available_node_types"].items()
            if name != config["head_node_type"]}


def _head(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"][config["head_node_type"]]


# -- Ray's own validation ------------------------------------------------------------------

def test_ray_validates_the_prepared_config(prepared: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)  # raises jsonschema.ValidationError or ValueError


def test_ray_validation_is_live() -> None:
    """A misspelt key must fail, or the test above proves nothing."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = yaml.safe_load(CLUSTER_FILE.read_text())
    broken["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_preparation_keeps_our_worker_bounds(config: dict[str, Any],
                                             prepared: dict[str, Any]) -> None:
    for name, node in config["available_node_types"].items():
        after = prepared["available_node_types"][name]
        assert after["min_workers"] == node.get("min_workers", 0)
        if name != config["head_node_type"]:
            assert after["max_workers"] == node["max_workers"]
    assert _head(prepared)["max_workers"] == 0


# -- cost and capacity ---------------------------------------------------------------------

def test_workers_start_at_zero_and_are_capped(config: dict[str, Any]) -> None:
    assert 0 < config["max_workers"] <= 16
    assert config["idle_timeout_minutes"] > 0
    assert config["provider"]["cache_stopped_nodes"] is False
    for name, node in _workers(config).items():
        assert node["min_workers"] == 0, name
        assert 1 <= node["max_workers"] <= config["max_workers"], name


def test_gpu_workers_declare_gpus_and_use_spot(config: dict[str, Any]) -> None:
    workers = _workers(config)
    assert workers
    for name, node in workers.items():
        instance = node["node_config"]["InstanceType"]
        assert instance.startswith(GPU_FAMILIES), f"{name}: {instance} is not a GPU type"
        resources = node.get("resources", {})
        assert resources.get("GPU", 0) >= 1 and resources.get("CPU", 0) >= 1, (
            f"{name} must declare its CPUs and GPUs")
        market = node["node_config"].get("InstanceMarketOptions", {})
        assert market.get("MarketType") == "spot", f"{name} is not a spot node type"
    assert {node["resources"]["GPU"] for node in workers.values()} >= {1, 4}


def test_head_is_on_demand_without_gpu(config: dict[str, Any]) -> None:
    head = _head(config)
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    assert head.get("resources", {}).get("GPU", 0) == 0
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head.get("max_workers", 0) == 0


def test_every_node_runs_the_same_image(config: dict[str, Any]) -> None:
    images = {node["node_config"]["ImageId"] for node in config["available_node_types"].values()}
    assert len(images) == 1, "one AMI, so that every node has the same Python for Ray"


# -- no secrets, nothing open to the world -------------------------------------------------

@pytest.mark.parametrize("path", [CLUSTER_FILE, DOCS_FILE], ids=lambda path: path.name)
def test_no_credentials(path: Path) -> None:
    text = path.read_text()
    for pattern in CREDENTIAL_PATTERNS:
        assert not re.search(pattern, text, re.IGNORECASE), f"{path.name} matches {pattern}"


def test_no_credentials_in_provider_or_auth(config: dict[str, Any]) -> None:
    assert "aws_credentials" not in config["provider"]
    assert config["auth"] == {"ssh_user": "ubuntu"}  # the launcher makes and keeps the key


def test_nothing_listens_on_every_address() -> None:
    assert "0.0.0.0" not in CLUSTER_FILE.read_text()  # no /0 rule, no dashboard-host=0.0.0.0


def test_every_node_names_its_security_group_and_role(config: dict[str, Any]) -> None:
    """Without SecurityGroupIds Ray creates a group whose SSH rule is open to 0.0.0.0/0;
    without IamInstanceProfile it creates a head role with full EC2 and S3 access."""
    assert "security_group" not in config["provider"]
    for name, node in config["available_node_types"].items():
        assert node["node_config"].get("SecurityGroupIds"), f"{name}: no SecurityGroupIds"
        assert node["node_config"].get("IamInstanceProfile", {}).get("Name"), (
            f"{name}: no IamInstanceProfile")
    for name, node in _workers(config).items():
        assert node["node_config"]["IamInstanceProfile"] == {"Name": "lrwa-s3-access"}, name


# -- what the nodes run --------------------------------------------------------------------

def test_every_node_installs_lrwa_and_a_pinned_ray(prepared: dict[str, Any]) -> None:
    ray_bound = next(Requirement(dep) for dep in importlib.metadata.requires("lrwa") or []
                     if Requirement(dep).name == "ray")
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = " ".join(prepared[key])
        assert re.search(r'pip install .*"lrwa\[cluster\] @ git\+https://', commands), key
        pin = re.search(r'"ray\[default\]==([0-9.]+)"', commands)
        assert pin, f"{key}: Ray must be pinned to the version that runs `ray up`"
        assert ray_bound.specifier.contains(pin.group(1)), f"{key}: {pin.group(1)} {ray_bound}"
        assert "/shared" in commands and "mount" in commands, key


def test_workers_refuse_a_torch_without_cuda(prepared: dict[str, Any]) -> None:
    assert any("torch.cuda.is_available()" in command
               for command in prepared["worker_setup_commands"])


def test_shared_folder_is_in_the_cluster_region(config: dict[str, Any]) -> None:
    region = config["provider"]["region"]
    hosts = re.findall(r"\.efs\.([a-z0-9-]+)\.amazonaws\.com", CLUSTER_FILE.read_text())
    assert hosts and set(hosts) == {region}


def test_docs_pin_the_same_ray_locally() -> None:
    pins = set(re.findall(r'"ray\[default\]==([0-9.]+)"',
                          CLUSTER_FILE.read_text() + DOCS_FILE.read_text()))
    assert len(pins) == 1, f"cluster.yaml and docs/cluster.md pin different Rays: {pins}"


def test_docs_explain_every_placeholder() -> None:
    text = CLUSTER_FILE.read_text()
    docs = DOCS_FILE.read_text()
    placeholders = set(re.findall(r"\b[a-z]+-REPLACE_ME\b", text)) | {"OWNER"}
    placeholders |= set(re.findall(r"\{Name: (lrwa-[a-z0-9-]+)\}", text))
    assert placeholders >= {"ami-REPLACE_ME", "sg-REPLACE_ME", "fs-REPLACE_ME",
                            "lrwa-head", "lrwa-s3-access"}
    assert not [name for name in placeholders if name not in docs]


# -- docs/cluster.md -----------------------------------------------------------------------

def _shell_lines() -> list[str]:
    """Lines of the bash blocks, continuations joined and comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS_FILE.read_text(), re.DOTALL)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines()]


def _lrwa_commands() -> list[list[str]]:
    """Every `lrwa ...` command in the bash blocks, also inside `bash -c "..."`."""
    found = []
    for line in _shell_lines():
        for match in re.finditer(r"(?<![\w./-])lrwa ([a-z][^\"';&|]*)", line):
            found.append(shlex.split(match.group(1)))
    return found


def test_docs_name_the_commands_this_test_checks() -> None:
    subcommands = {args[0] for args in _lrwa_commands()}
    assert {"teacher", "distill", "tune", "report"} <= subcommands


@pytest.mark.parametrize("args", _lrwa_commands(), ids=" ".join)
def test_docs_command_parses(args: list[str]) -> None:
    from lrwa.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions  # argparse's subcommand table
                    if action.dest == "command").choices
    # A documented command that lrwa lacks is a broken instruction, never a skipped check.
    assert args[0] in commands, f"docs/cluster.md runs `lrwa {args[0]}`, which lrwa.cli lacks"
    try:
        parser.parse_args(args)
    except SystemExit as error:
        pytest.fail(f"`lrwa {shlex.join(args)}` does not parse (exit {error.code})")


def test_docs_python_names_exist() -> None:
    docs = DOCS_FILE.read_text()
    names = set(re.findall(r"\blrwa\.([a-z_]+)\.([A-Za-z_]+)", docs))
    names |= set(re.findall(r"from lrwa\.([a-z_]+) import ([A-Za-z_]+)", docs))
    assert ("tune", "load_study") in names
    for module, attribute in names:
        assert attribute in _top_level_names(f"lrwa.{module}"), f"lrwa.{module}.{attribute}"


def _top_level_names(module: str) -> set[str]:
    """Names a module defines, read from its source: importing pandas and torch for this
    would take seconds."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _teacher_recipes() -> dict[str, dict[str, Any]]:
    """`lrwa.teacher.RECIPES` read from its source (importing it would import torch)."""
    spec = importlib.util.find_spec("lrwa.teacher")
    assert spec is not None and spec.origin
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "RECIPES":
            assert isinstance(node.value, ast.Dict)
            return {ast.literal_eval(key): {word.arg: ast.literal_eval(word.value)
                                            for word in call.keywords}
                    for key, call in zip(node.value.keys, node.value.values)}
    raise AssertionError("lrwa/teacher.py defines no RECIPES")


def test_docs_teacher_recipes_match_the_code() -> None:
    recipes = _teacher_recipes()
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in DOCS_FILE.read_text().splitlines() if line.startswith("|")]
    documented = {row[1].strip("`"): row for row in rows
                  if len(row) > 5 and row[1].strip("`") in recipes}
    assert {"cifar10", "cifar100", "svhn"} <= set(documented)
    for dataset, row in documented.items():
        recipe = recipes[dataset]
        assert (int(row[3]), int(row[4]), float(row[5])) == (
            recipe["epochs"], recipe["batch_size"], recipe["lr"]), dataset


def test_the_head_publishes_its_node_types_after_starting_ray(config: dict[str, Any]) -> None:
    """After `ray start --head`, the node types go to the GCS, where `lrwa tune` and Ray
    Train read the cluster's maximum (tests/test_autoscaling.py runs the same command)."""
    commands = config["head_start_ray_commands"]
    start = next(index for index, line in enumerate(commands) if "ray start --head" in line)
    publish = [shlex.split(line) for line in commands[start + 1:] if "ray_capacity" in line]
    assert publish == [["python", "-m", "lrwa.ray_capacity", "publish",
                        "~/ray_bootstrap_config.yaml"]]
    assert "main" in _top_level_names("lrwa.ray_capacity")


def test_docs_ask_for_no_nodes_by_hand() -> None:
    """A `request_resources` outlives the driver and holds nodes up until it is cleared."""
    assert "request_resources" not in DOCS_FILE.read_text()
