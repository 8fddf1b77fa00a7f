import functools

import pytest
import torch

from toolkit import zoo
from toolkit.errors import BadInputError
from toolkit.ir import Graph, Normalize

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@functools.lru_cache(maxsize=None)
def built(name, dataset="mnist"):
    """Each architecture built once per module (seed 0): the big ones take a while to initialise."""
    return zoo.build(name, dataset)


def n_params(g):
    return sum(p.numel() for p in g.parameters())


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_every_name_builds_with_ten_logits(dataset):
    x = torch.rand(2, *SHAPES[dataset])
    for name in zoo.names():
        g = built(name, dataset)
        assert isinstance(g, Graph) and g.input_spec.shape == SHAPES[dataset], name
        with torch.no_grad():
            assert tuple(g(x).shape) == (2, 10), name
        assert g.meta["zoo"] == name


# Hand counts: Conv(out, k) on c channels has out*c*k*k + out parameters, FC(i -> o) has i*o + o.
SMALL_MNIST = (16 * 1 * 16 + 16) + (32 * 16 * 16 + 32) + (1568 * 100 + 100) + (100 * 10 + 10)
SMALL_CIFAR = (16 * 3 * 16 + 16) + (32 * 16 * 16 + 32) + (2048 * 100 + 100) + (100 * 10 + 10)
LARGE_CONVS = lambda c: (32 * c * 9 + 32) + (32 * 32 * 16 + 32) + (64 * 32 * 9 + 64) + (64 * 64 * 16 + 64)
LARGE_MNIST = LARGE_CONVS(1) + (3136 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
LARGE_CIFAR = LARGE_CONVS(3) + (4096 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)


def test_param_counts_small_and_large_match_hand_computation():
    assert n_params(built("small", "mnist")) == SMALL_MNIST == 166406
    assert n_params(built("small", "cifar10")) == SMALL_CIFAR == 214918
    assert n_params(built("large", "mnist")) == LARGE_MNIST == 1974762
    assert n_params(built("large", "cifar10")) == LARGE_CIFAR == 2466858
    # mlp_256x2 has the shape of VNN-COMP's mnist-net_256x2 (269,322 parameters in its README).
    assert n_params(built("mlp_256x2")) == 269322


def test_flatten_sizes_of_paper_spec():
    def fc1_in(name, ds):
        return built(name, ds).nodes["fc1"].weight.shape[1]
    assert fc1_in("xlarge", "mnist") == 25088 and fc1_in("xlarge", "cifar10") == 32768
    assert fc1_in("small", "mnist") == 1568 and fc1_in("small", "cifar10") == 2048
    assert fc1_in("cnn_3layer_fixed_k3_w1", "mnist") == 8 * 7 * 7       # h = 7 for k = 3
    assert fc1_in("cnn_3layer_fixed_k5_w1", "mnist") == 8 * 6 * 6       # h = 6 for k = 5
    assert fc1_in("cnn_3layer_fixed_k5_w1", "cifar10") == 8 * 7 * 7     # (32 - 4) // 4 = 7
    assert fc1_in("cnn_2layer_w2_l256", "mnist") == 16 * 7 * 7
    # default linear size of cnn_3layer_fixed is 64 w; an explicit _l overrides it
    assert zoo.build("cnn_3layer_fixed_k3_w2").nodes["fc1"].weight.shape[0] == 128
    assert zoo.build("cnn_3layer_fixed_k3_w2_l512").nodes["fc1"].weight.shape[0] == 512
    g = zoo.build("cnn_4layer_w2_l256")
    assert [g.nodes[k].weight.shape[0] for k in ("fc1", "fc2", "fc3")] == [256, 256, 10]


def test_stride2_pitfall_shape():
    # xlarge's 3x3 stride-2 conv maps 28 -> 14; its transpose needs output_padding=1 to give 28 back.
    g = built("xlarge", "mnist")
    conv = g.nodes["conv3"]
    assert g.shapes()["conv3"] == (128, 14, 14)
    y = torch.zeros(1, 128, 14, 14)
    back = lambda op: torch.nn.functional.conv_transpose2d(y, conv.weight, None, 2, 1, op).shape[-1]
    assert back(0) == 27 and back(1) == 28


def test_seeded_default_init_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b, c = zoo.build("small", seed=3), zoo.build("small", seed=3), zoo.build("small", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.nodes["fc1"].weight, b.nodes["fc1"].weight)
    assert not torch.equal(a.nodes["fc1"].weight, c.nodes["fc1"].weight)
    # torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias
    bound = 1568 ** -0.5
    assert a.nodes["fc1"].bias.abs().max() <= bound and a.nodes["fc1"].bias.abs().max() > 0.9 * bound


def test_families_and_names():
    small, large = zoo.family("crown_ibp_10_small"), zoo.family("crown_ibp_8_large")
    assert len(small) == 10 and len(large) == 8
    assert large.count("cnn_4layer_w4_l512") == 2
    names = zoo.names()
    assert len(names) == len(set(names)) and set(small + large) <= set(names)
    assert {"mlp_2x100", "mlp_256x2", "small", "large", "xlarge"} <= set(names)
    with pytest.raises(BadInputError, match="known model family|unknown model family"):
        zoo.family("nope")


def test_unknown_name_and_dataset_are_bad_input():
    with pytest.raises(BadInputError, match=r"unknown model 'resnet'.*mlp_2x100.*cnn_4layer_w\{w\}_l\{l\}"):
        zoo.build("resnet")
    with pytest.raises(BadInputError, match="unknown model"):
        zoo.build("cnn_3layer_fixed_k4_w1")  # only k = 3 or 5
    with pytest.raises(BadInputError, match=">= 1"):
        zoo.build("cnn_2layer_w0_l128")
    with pytest.raises(BadInputError, match="unknown dataset 'svhn'"):
        zoo.build("small", "svhn")


def test_mean_std_prepends_normalize():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    g = zoo.build("small", "cifar10", seed=1, mean=mean, std=std)
    plain = zoo.build("small", "cifar10", seed=1)
    assert isinstance(g.nodes[g.order[0]], Normalize) and g.input_spec.normalization == "in-graph"
    x = torch.rand(2, 3, 32, 32)
    xn = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(g(x), plain(xn), atol=1e-5)
    with pytest.raises(BadInputError, match="both mean and std"):
        zoo.build("small", "cifar10", mean=mean)
