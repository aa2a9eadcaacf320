"""latentinv.nn.autocast: autocast's state asked the same way on torch 2.2-2.3 (per-device functions) as
on torch >= 2.4 (``is_autocast_enabled(device_type)``), and the decoders choose the same paths with both.

torch 2.2 cannot be installed in CI; its API is emulated below as the module sees it
(``is_autocast_enabled()`` takes no argument and answers for CUDA, ``get_autocast_dtype`` does not
exist), and the suite was run against a real torch 2.2.0 (docs/user_trial.md, "torch 2.2")."""
import re
from pathlib import Path

import pytest
import torch

import latentinv.nn.autocast as autocast
from latentinv.nn.vae import ConvDecoder

SRC = Path(__file__).resolve().parents[1] / "src" / "latentinv"
# torch >= 2.4 warns that the per-device functions are deprecated; they are what torch < 2.4 has
pytestmark = pytest.mark.filterwarnings("ignore:torch.*is deprecated:DeprecationWarning")
TORCH_2_4 = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)
# CUDA's autocast state, asked as the torch that runs the tests asks it
_cuda_autocast = (lambda: torch.is_autocast_enabled("cuda")) if TORCH_2_4 else torch.is_autocast_enabled


class TorchBefore24:
    """torch as torch 2.2 and 2.3 show it to latentinv.nn.autocast (their state is the real torch's)."""

    def __getattr__(self, name):
        if name == "get_autocast_dtype":
            raise AttributeError(name)
        return getattr(torch, name)

    @staticmethod
    def is_autocast_enabled():          # no device type: CUDA's state
        return _cuda_autocast()


def _use_torch_before_2_4(monkeypatch):
    old = TorchBefore24()
    with pytest.raises(TypeError):      # as torch 2.2 answers a device type
        old.is_autocast_enabled("cpu")
    monkeypatch.setattr(autocast, "torch", old)
    monkeypatch.setattr(autocast, "_BY_DEVICE_TYPE", autocast._has_device_type_api(old))


def test_the_api_is_told_apart():
    assert autocast._has_device_type_api(torch) is TORCH_2_4 and autocast._BY_DEVICE_TYPE is TORCH_2_4
    assert autocast._has_device_type_api(TorchBefore24()) is False

    class HalfWay(TorchBefore24):       # get_autocast_dtype without is_autocast_enabled(device_type)
        get_autocast_dtype = staticmethod(lambda device_type: torch.bfloat16)

    assert autocast._has_device_type_api(HalfWay()) is False


@pytest.fixture(params=["torch>=2.4", "torch<2.4"])
def api(request, monkeypatch):
    if request.param == "torch>=2.4" and not TORCH_2_4:
        pytest.skip(f"torch {torch.__version__} has the API of torch < 2.4 only")
    if request.param == "torch<2.4":
        _use_torch_before_2_4(monkeypatch)
    assert autocast._BY_DEVICE_TYPE is (request.param == "torch>=2.4")
    return request.param


STATES = [  # (context, autocast_enabled("cpu"), bfloat16_autocast("cpu"))
    (lambda: torch.autocast("cpu", enabled=False), False, False),
    (lambda: torch.autocast("cpu", dtype=torch.bfloat16), True, True),
    (lambda: torch.autocast("cpu", dtype=torch.float16), True, False),
]


@pytest.mark.parametrize("context, enabled, bf16", STATES, ids=["off", "bfloat16", "float16"])
def test_the_state_of_cpu_autocast(api, context, enabled, bf16):
    assert autocast.autocast_enabled("cpu") is False and autocast.bfloat16_autocast("cpu") is False
    with context():
        assert autocast.autocast_enabled("cpu") is enabled
        assert autocast.bfloat16_autocast("cpu") is bf16
        # CPU autocast is not CUDA's
        assert autocast.autocast_enabled("cuda") is False and autocast.bfloat16_autocast("cuda") is False
        with torch.autocast("cpu", enabled=False):     # nested: off again inside
            assert autocast.autocast_enabled("cpu") is False and autocast.bfloat16_autocast("cpu") is False


def test_a_frozen_decoder_takes_the_same_bfloat16_path_under_either_api(monkeypatch):
    """Under bfloat16 autocast the frozen CPU decoder runs its bfloat16 kernels; told so by torch < 2.4's
    functions it gives the same models, bit for bit (told there is no autocast, it gives others: the
    comparison can tell the paths apart)."""
    torch.manual_seed(0)
    decoder = ConvDecoder((33, 17), 6, (4, 8, 8, 16), (5, 5, 4, 4), hidden_size=32).eval().requires_grad_(False)
    z = torch.randn(5, 6)
    float32 = decoder(z)

    def models():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return decoder(z)

    low = models()
    assert low.dtype == torch.float32
    assert 1e-4 < float((low - float32).abs().max()) < 0.1         # bfloat16's rounding
    with monkeypatch.context() as m:
        m.setattr(autocast, "_BY_DEVICE_TYPE", False)
        m.setattr(autocast, "_old_api", lambda device_type: None)   # "no autocast here"
        assert not torch.equal(models(), low)
    _use_torch_before_2_4(monkeypatch)
    assert torch.equal(models(), low)


def test_the_package_asks_autocast_through_latentinv_nn_autocast():
    """torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype are new in torch 2.4, and the
    package allows torch>=2.2: every other module asks latentinv.nn.autocast (under torch 2.2, the
    decoders failed with "is_autocast_enabled() takes no arguments (1 given)")."""
    pattern = re.compile(r"torch\.(is_autocast_enabled|get_autocast_dtype)\(")
    users = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
                   if p.name != "autocast.py" and pattern.search(p.read_text()))
    assert users == [], f"these modules ask torch's autocast state directly (torch >= 2.4 only): {users}"
