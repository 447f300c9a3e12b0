"""The library's layers: diffusion/ (pure tensor code) -> modules/ -> objectives/, meeting through contract.py."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchrl_qsm"


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("diffusion/*.py")), ids=lambda p: p.name)
def test_diffusion_is_pure_tensor_code(path):
    for name in imports(path):
        outside = name.startswith(("torchrl", "tensordict")) and not name.startswith("torchrl_qsm.diffusion")
        assert not outside, f"{path.name} imports {name}"


def test_the_loss_knows_the_actor_only_through_the_contract():
    path = PACKAGE / "objectives" / "qsm.py"
    assert not {name for name in imports(path) if name.startswith(("torchrl_qsm.modules", "torchrl_qsm.diffusion"))}
    project_classes = {"DiffusionActor", "DiffusionPolicy", "EpsilonNetwork", "ScoreNetworkPolicy"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            assert not {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} & project_classes


def test_modules_do_not_reach_up_into_objectives():
    for path in PACKAGE.glob("modules/*.py"):
        assert not {name for name in imports(path) if name.startswith("torchrl_qsm.objectives")}, path.name
