"""Feature-wise consistency (M3VSNet) with its two frozen extractors, on analytic textured planes:
VGG16 (:class:`FeatureExtractor`) and, without VGG16 weights, a frozen copy of the network's own
feature maps (:class:`FrozenNetworkFeatures`, PatchmatchNet's pyramid and CVP-MVSNet's network).

No ImageNet weights are downloaded: the extractors have seeded random weights. Their first layers
then still act as local texture filters, which is all the depth scan needs; the planes are
rendered at 128 x 96 so that the stride-8 layer has 16 x 12 samples.
"""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline.losses import (
    FEATURE_LAYERS,
    FeatureExtractor,
    FrozenNetworkFeatures,
    SelfSupervisedLoss,
    VGG16Features,
    feature_loss,
    get_recipe,
    make_feature_extractor,
)
from pipeline.losses.feature import feature_error_maps
from test_losses import FRONTO, SLANTED, _stage_depths, camera, render_plane

HEIGHT, WIDTH = 96, 128
OFFSETS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)  # scene units; the plane is at depth 2


def plane_scene(plane):
    """Four views of a textured plane at 128 x 96 (the fixture cameras of test_losses)."""
    focal = 60.0 * WIDTH / 64
    K = torch.tensor([[focal, 0.0, WIDTH / 2], [0.0, focal, HEIGHT / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    poses = [camera((0.0, 0.0, 0.0)), camera((-0.2, 0.0, 0.0), 0.05), camera((0.2, 0.05, 0.0), -0.05), camera((0.0, -0.2, 0.05))]
    images, depths = zip(*(render_plane(K, pose, *plane, height=HEIGHT, width=WIDTH) for pose in poses))
    return {
        "images": torch.stack(images)[None].float(),
        "depth": depths[0][None].float(),
        "Ks": K.expand(4, 3, 3)[None].float(),
        "cam_from_world": torch.stack(poses)[None].float(),
        "src_from_ref": torch.stack([pose @ torch.linalg.inv(poses[0]) for pose in poses[1:]])[None].float(),
    }


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return FeatureExtractor()


@pytest.mark.parametrize("plane", [FRONTO, SLANTED], ids=["fronto", "slanted"])
def test_feature_term_is_minimal_at_true_depth(plane, extractor):
    scene = plane_scene(plane)
    features = extractor(scene["images"])
    assert {layer: tuple(maps.shape) for layer, maps in features.items()} == {
        "relu2_2": (1, 4, 128, 48, 64), "relu3_3": (1, 4, 256, 24, 32), "relu4_3": (1, 4, 512, 12, 16)
    }
    values = [
        float(feature_loss(features, extractor.strides(), scene["depth"] + offset, scene["Ks"], scene["src_from_ref"]))
        for offset in OFFSETS
    ]
    middle = OFFSETS.index(0.0)
    assert all(a > b for a, b in zip(values[: middle + 1], values[1 : middle + 1])), values
    assert all(a < b for a, b in zip(values[middle:], values[middle + 1 :])), values


def test_gradient_reaches_depth_not_the_frozen_weights(extractor):
    scene = plane_scene(SLANTED)
    # even with requires_grad switched back on (a parent module's requires_grad_(True), say), the
    # extractor runs without autograd: no gradient can reach its weights through this term
    extractor.requires_grad_(True)
    try:
        features = extractor(scene["images"])
        assert all(not maps.requires_grad for maps in features.values())
        depth = (scene["depth"] * 1.05).requires_grad_(True)
        feature_loss(features, extractor.strides(), depth, scene["Ks"], scene["src_from_ref"]).backward()
        assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0
        assert all(p.grad is None for p in extractor.parameters())
    finally:
        extractor.requires_grad_(False)
    extractor.train()
    assert not extractor.vgg.training  # the extractor never trains


def test_feature_term_at_coarser_and_finer_depths(extractor):
    """A depth coarser than a layer (1/4 resolution against relu2_2's 1/2) pools the reference
    features instead of the depth; the term is still lowest at the truth."""
    scene = plane_scene(FRONTO)
    features = extractor(scene["images"])
    quarter = torch.nn.functional.avg_pool2d(scene["depth"], 4)
    values = [
        float(feature_loss(features, extractor.strides(), quarter + offset, scene["Ks"], scene["src_from_ref"], depth_stride=4))
        for offset in (-0.2, 0.0, 0.2)
    ]
    assert values[1] < min(values[0], values[2]), values
    with pytest.raises(ValueError, match="does not match the depth"):
        feature_loss(features, extractor.strides(), scene["depth"][..., :-4, :], scene["Ks"], scene["src_from_ref"])


def test_feature_error_maps_and_layers():
    reference = torch.rand(2, 8, 5, 7, generator=torch.Generator().manual_seed(1)) + 0.1
    same = reference[:, None].expand(-1, 3, -1, -1, -1)
    assert float(feature_error_maps(reference, same).abs().max()) == 0.0
    # scale-free: the error of a scaled layer is the error of the layer
    other = same * 1.1
    torch.testing.assert_close(feature_error_maps(10 * reference, 10 * other), feature_error_maps(reference, other))
    with pytest.raises(ValueError, match="warped"):
        feature_error_maps(reference, same[:, :, :4])
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor(("relu9_9",))
    with pytest.raises(ValueError, match="layers"):
        VGG16Features("relu2_2").forward_layers(torch.rand(1, 3, 8, 8), ("relu3_3",))
    assert FEATURE_LAYERS == ("relu2_2", "relu3_3", "relu4_3")


def test_feature_extractor_off_without_weights_and_loads_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert make_feature_extractor(None) is None  # neither VGG16 weights nor network features
    assert "feature-wise consistency (M3VSNet) is OFF" in caplog.text and "vgg16_weights" in caplog.text
    torch.manual_seed(2)
    source = VGG16Features("relu4_3")
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in source.features.state_dict().items()}, path)
    module = make_feature_extractor(path)
    torch.testing.assert_close(module.vgg.features[21].weight, source.features[21].weight)
    assert all(not p.requires_grad for p in module.parameters())
    with pytest.raises(FileNotFoundError):
        make_feature_extractor(tmp_path / "missing.pth")


def test_m3vsnet_objective_has_the_three_metrics(extractor, caplog):
    scene = plane_scene(SLANTED)
    recipe = get_recipe("m3vsnet")
    assert set(recipe.weights) == {"photometric", "ssim", "smoothness", "feature", "depth_normal"}
    objective = SelfSupervisedLoss(recipe, feature_extractor=extractor)
    assert "feature" in objective.active_terms

    def evaluate(scale):
        depths = _stage_depths(scene["depth"], scale)
        depths[0][0].requires_grad_(True)
        total, terms = objective(scene["images"], scene["Ks"], scene["cam_from_world"], depths)
        return total, terms, depths

    total, terms, depths = evaluate(1.0)
    assert set(terms) == set(recipe.weights)
    total.backward()
    assert depths[0][0].grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())
    _, off_terms, _ = evaluate(1.1)
    assert float(off_terms["feature"].detach()) > float(terms["feature"].detach())
    with caplog.at_level(logging.WARNING):
        without = SelfSupervisedLoss(recipe)
    assert "feature" not in without.active_terms and "feature-wise term is OFF" in caplog.text


# ------------------------------------------------------------------------------------------------
# without VGG16 weights: a frozen copy of the network's own feature maps at the start of training

BACKBONES = ("patchmatchnet", "cvp")
TINY_MODEL = {  # small searches: a training step at 128 x 96 stays quick on a CPU
    "patchmatchnet": {"num_initial_hypotheses": 8, "num_perturbation_hypotheses": [2, 2, 4], "iterations": [1, 1, 2]},
    "cvp": {"backbone": "cvp", "cvp_levels": 3},
}


STRIDES = {"patchmatchnet": {"stride2": 2, "stride4": 4, "stride8": 8}, "cvp": {"stride1": 1, "stride2": 2}}


def seeded_network(backbone: str, seed: int = 0, trained_statistics: bool = False):
    """A seeded network of ``backbone``; with ``trained_statistics`` its BatchNorm layers hold the
    statistics of the test planes' images, as an ``--init`` checkpoint holds those of its data
    (from scratch they are 0 and 1, so the evaluation-mode copy sees the raw activations)."""
    from pipeline.model import ModelConfig, build_model

    torch.manual_seed(seed)
    network = build_model(ModelConfig.from_dict(TINY_MODEL[backbone]))
    if trained_statistics:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # the running statistics become the mean over the passes
        features = network.multiscale_features().train()
        with torch.no_grad():
            for plane in (FRONTO, SLANTED):
                features(plane_scene(plane)["images"][0])
        network.eval()
    return network


@pytest.fixture(scope="module", params=BACKBONES)
def network_extractor(request):
    network = seeded_network(request.param)
    return request.param, network, make_feature_extractor(None, network_features=network.multiscale_features())


def test_fallback_extractor_is_a_frozen_copy(network_extractor, caplog):
    backbone, network, extractor = network_extractor
    assert isinstance(extractor, FrozenNetworkFeatures)
    assert extractor.strides() == STRIDES[backbone]
    copied = dict(extractor.features.named_parameters())
    live = dict(network.multiscale_features().named_parameters())
    assert copied.keys() == live.keys() and copied
    for name, parameter in copied.items():
        torch.testing.assert_close(parameter, live[name], rtol=0, atol=0)
        assert parameter.data_ptr() != live[name].data_ptr()  # a copy, not the network's tensors
        assert not parameter.requires_grad and live[name].requires_grad
    extractor.train()
    assert not any(m.training for m in extractor.features.modules())  # BatchNorm keeps its statistics
    with pytest.raises(ValueError, match="strides"):
        FrozenNetworkFeatures(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"\(B, V, 3, H, W\)"):
        extractor(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("trained_statistics", [False, True], ids=["from_scratch", "init_statistics"])
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("plane", [FRONTO, SLANTED], ids=["fronto", "slanted"])
def test_fallback_term_is_minimal_at_true_depth(plane, backbone, trained_statistics):
    network = seeded_network(backbone, trained_statistics=trained_statistics)
    extractor = make_feature_extractor(None, network_features=network.multiscale_features())
    scene = plane_scene(plane)
    features = extractor(scene["images"])
    channels = {"patchmatchnet": (16, 32, 64), "cvp": (16, 16)}[backbone]  # the configs' defaults
    assert {layer: tuple(maps.shape) for layer, maps in features.items()} == {
        layer: (1, 4, c, HEIGHT // stride, WIDTH // stride) for (layer, stride), c in zip(STRIDES[backbone].items(), channels)
    }
    values = [
        float(feature_loss(features, extractor.strides(), scene["depth"] + offset, scene["Ks"], scene["src_from_ref"]))
        for offset in OFFSETS
    ]
    middle = OFFSETS.index(0.0)
    assert all(a > b for a, b in zip(values[: middle + 1], values[1 : middle + 1])), values
    assert all(a < b for a, b in zip(values[middle:], values[middle + 1 :])), values


def test_fallback_term_is_active_and_the_copy_stays_frozen_through_a_training_step(network_extractor):
    """A training step of the m3vsnet objective without VGG16 weights: the feature term is on and
    non-zero, its gradient reaches the depth, the network's features train and the copy does not."""
    from pipeline.training.step import train_step

    backbone, _, _ = network_extractor
    network = seeded_network(backbone)
    extractor = make_feature_extractor(None, network_features=network.multiscale_features())
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    live_before = {k: v.clone() for k, v in network.multiscale_features().state_dict().items()}
    objective = SelfSupervisedLoss(get_recipe("m3vsnet"), feature_extractor=extractor)
    assert "feature" in objective.active_terms
    scene = plane_scene(SLANTED)
    batch = {
        "images": scene["images"], "K": scene["Ks"], "cam_from_world": scene["cam_from_world"],
        "depth_range": torch.tensor([1.5, 2.6]).expand(1, 4, 2), "mask": torch.ones(1, 1, HEIGHT, WIDTH, dtype=torch.bool),
    }
    depth_gradients = []
    original_loss = feature_loss

    def recording_loss(features, strides, depth, *args, **kwargs):  # the depth the term scores, its gradient
        if depth.requires_grad:
            depth.register_hook(depth_gradients.append)
        return original_loss(features, strides, depth, *args, **kwargs)

    import pipeline.losses.objective as objective_module

    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    objective_module.feature_loss, saved = recording_loss, objective_module.feature_loss
    try:
        total, values = train_step(
            network, objective, optimizer, scaler, batch, objective.active_terms, None, 0.0,
            torch.Generator().manual_seed(0), None, 0.0, torch.device("cpu"),
        )
    finally:
        objective_module.feature_loss = saved
    assert torch.isfinite(total) and float(values["feature"]) > 0
    assert depth_gradients and any(g.abs().sum() > 0 for g in depth_gradients)
    assert all(torch.isfinite(g).all() for g in depth_gradients)
    assert all(p.grad is None and not p.requires_grad for p in extractor.parameters())
    for key, value in extractor.state_dict().items():  # weights and BatchNorm statistics unchanged
        assert torch.equal(value, before[key]), key
    live_after = network.multiscale_features().state_dict()
    assert any(not torch.equal(live_after[k], live_before[k]) for k in live_before)  # the network did train


def test_fallback_gradient_reaches_depth_not_the_frozen_weights(network_extractor):
    _, _, extractor = network_extractor
    scene = plane_scene(SLANTED)
    extractor.requires_grad_(True)  # switched back on by a parent: still no autograd through the copy
    try:
        features = extractor(scene["images"])
        assert all(not maps.requires_grad for maps in features.values())
        depth = (scene["depth"] * 1.05).requires_grad_(True)
        feature_loss(features, extractor.strides(), depth, scene["Ks"], scene["src_from_ref"]).backward()
        assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0
        assert all(p.grad is None for p in extractor.parameters())
    finally:
        extractor.requires_grad_(False)


def test_vgg16_stays_first_choice(tmp_path, caplog):
    network = seeded_network("patchmatchnet")
    torch.manual_seed(2)
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in VGG16Features("relu4_3").features.state_dict().items()}, path)
    assert isinstance(make_feature_extractor(path, network_features=network.multiscale_features()), FeatureExtractor)
    with caplog.at_level(logging.INFO):
        module = make_feature_extractor(None, network_features=network.multiscale_features())
    assert isinstance(module, FrozenNetworkFeatures)
    assert "is OFF" not in caplog.text and "frozen copy of the network's own feature maps" in caplog.text
