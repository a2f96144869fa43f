import numpy as np
import pytest
import torch
from conftest import tiny_params
from scipy import linalg

from pipeline.dataset import load_split
from pipeline.metrics.distance import PrecomputedFeatures, fid, fid_kid, prdc
from pipeline.metrics.evaluator import load_evaluator, train_evaluator
from pipeline.metrics.suite import bootstrap_fid, classifier_scores, copy_share, nearest


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Reference Fréchet distance from sample statistics, written independently with scipy."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.5, 1.5), (2.0, 0.5)])
def test_fid_matches_the_scipy_reference_on_known_gaussians(shift, scale):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3000, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(3000, 6, generator=gen, dtype=torch.float64) * scale + shift
    got = fid_kid(a, b, kid_subset_size=200, kid_subsets=20)["fid"]
    assert got == pytest.approx(scipy_fid(a.numpy(), b.numpy()), rel=1e-6, abs=1e-8)
    # and the sample estimate is close to the closed form for N(0, I) vs N(shift, scale^2 I)
    analytic = 6 * shift**2 + 6 * (1 - scale) ** 2
    assert got == pytest.approx(analytic, abs=0.05 + 0.05 * analytic)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(800, 4, generator=gen), torch.randn(800, 4, generator=gen)
    same = fid_kid(a, b, kid_subset_size=200, kid_subsets=50)
    different = fid_kid(a, b + 1.0, kid_subset_size=200, kid_subsets=50)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3  # KID is unbiased: ~0 for equal distributions
    assert different["kid_mean"] > 10 * max(same["kid_mean"], 1e-3)
    again = fid_kid(a, b + 1.0, kid_subset_size=200, kid_subsets=50)
    assert again == different  # seeded subsets: reproducible


def test_precision_recall_density_coverage_on_manifolds_with_known_answers():
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(1000, 8, generator=gen)
    same = prdc(real, torch.randn(1000, 8, generator=gen))  # one distribution: everything near 1
    assert min(same["precision"], same["recall"], same["coverage"]) > 0.9 and 0.8 < same["density"] < 1.2
    assert prdc(real, real + 100.0) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # mode dropping: reals in two far-apart clusters, samples from one; they look real (precision
    # ~1) but reach half of the real variety (recall and coverage ~0.5)
    modes = torch.cat([real[:500], real[500:] + 20.0])
    half = prdc(modes, torch.randn(500, 8, generator=gen))
    assert half["precision"] > 0.9 and 0.4 < half["recall"] < 0.55 and 0.4 < half["coverage"] < 0.55
    # a blurred, spread-out generator: wide variety (recall high) but few samples look real
    wide = prdc(real, 3.0 * torch.randn(1000, 8, generator=gen))
    assert wide["precision"] < 0.3 and wide["recall"] > 0.8
    with pytest.raises(ValueError, match="more than 5 images"):
        prdc(real[:5], real)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid(x, x + 1.0) == pytest.approx(8.0, rel=1e-6)  # a pure mean shift: |mu1 - mu2|^2


def test_classifier_scores_on_probabilities_with_known_answers():
    k = 10
    sure = torch.eye(k).repeat(5, 1)  # certain, and spread evenly over the classes
    assert classifier_scores(sure) == pytest.approx({"confidence": 1.0, "classifier_score": float(k)}, rel=1e-6)
    unsure = torch.full((50, k), 1.0 / k)  # every image the same uniform guess
    assert classifier_scores(unsure) == pytest.approx({"confidence": 0.1, "classifier_score": 1.0}, rel=1e-6)
    one_class = torch.eye(k)[[3] * 50]  # certain but always the same class: no variety
    assert classifier_scores(one_class) == pytest.approx({"confidence": 1.0, "classifier_score": 1.0}, rel=1e-6)


def test_copy_share_tells_copies_from_new_samples():
    gen = torch.Generator().manual_seed(5)
    train, held_out = torch.randn(600, 8, generator=gen), torch.randn(400, 8, generator=gen)
    held_out_nn = nearest(held_out, train)[0]
    fresh = torch.randn(400, 8, generator=gen)  # new samples of the same distribution: like held-out data
    assert 0.01 <= copy_share(nearest(fresh, train)[0], held_out_nn) <= 0.12
    copies = train[:400] + 1e-3 * torch.randn(400, 8, generator=gen)  # training images, barely perturbed
    dist, idx = nearest(copies, train)
    assert copy_share(dist, held_out_nn) == 1.0 and torch.equal(idx, torch.arange(400))


def test_fid_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_samples():
    gen = torch.Generator().manual_seed(6)
    ref = torch.randn(2000, 4, generator=gen, dtype=torch.float64)
    small, large = (torch.randn(n, 4, generator=gen, dtype=torch.float64) + 0.5 for n in (200, 2000))
    lo_s, hi_s = bootstrap_fid(ref, small, rounds=40)
    lo_l, hi_l = bootstrap_fid(ref, large, rounds=40)
    assert lo_s < fid(ref, small) < hi_s and lo_l < fid(ref, large) < hi_l
    assert hi_l - lo_l < 0.6 * (hi_s - lo_s)
    assert bootstrap_fid(ref, small, rounds=40) == (lo_s, hi_s)  # seeded: reproducible


def test_feature_sets_of_different_width_are_rejected():
    with pytest.raises(ValueError, match="equal F"):
        fid_kid(torch.zeros(5, 3), torch.zeros(5, 4))


def test_precomputed_feature_module_declares_an_integer_width():
    assert PrecomputedFeatures(7).num_features == 7 and isinstance(PrecomputedFeatures(7.0).num_features, int)


def test_evaluator_learns_digits_and_exposes_its_feature_width(prepared_digits, tmp_path):
    cfg = tiny_params(evaluate={"evaluator": {"steps": 150, "batch_size": 64, "features": 32}}).evaluate.evaluator
    res = train_evaluator(cfg, load_split(prepared_digits, "train"), load_split(prepared_digits, "val"),
                          tmp_path / "ev.pt", progress=False)  # fmt: skip
    assert res.task == "classes"
    assert res.val_accuracy > 0.85  # a feature space that knows the digits
    net, spec = load_evaluator(tmp_path / "ev.pt")
    assert net.num_features == 32 and spec["classes"] == [str(i) for i in range(10)]
    x = torch.zeros(3, 1, 16, 16)
    assert net.embed(x).shape == (3, 32)
    # the same seed gives the same file, byte for byte (what DVC hashes), wherever it is written
    train_evaluator(cfg, load_split(prepared_digits, "train"), load_split(prepared_digits, "val"),
                    tmp_path / "again" / "evaluator.pt", progress=False)  # fmt: skip
    assert (tmp_path / "again" / "evaluator.pt").read_bytes() == (tmp_path / "ev.pt").read_bytes()


def test_the_suite_reports_precision_recall_and_fid_as_a_multiple_of_the_real_floor(prepared_digits, tmp_path):
    from pipeline.metrics.suite import evaluate, generation_markdown
    from pipeline.training.runner import TrainPaths, train

    params = tiny_params(model={"conditional": True}, evaluate={"evaluator": {"steps": 150, "batch_size": 64}})
    train_evaluator(params.evaluate.evaluator, load_split(prepared_digits, "train"),
                    load_split(prepared_digits, "val"), tmp_path / "ev.pt", progress=False)  # fmt: skip
    paths = TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                       live_dir=tmp_path / "live", samples=tmp_path / "s.png")  # fmt: skip
    train(params, paths, progress=False)
    m = evaluate(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared_digits, comparison_png=None,
                 figures_dir=tmp_path / "figures")  # fmt: skip
    assert m["fid_vs_floor"] == round(m["fid"] / m["fid_real_floor"], 2) and m["fid_vs_floor"] > 1
    for name in ("precision", "recall", "density", "coverage"):
        assert 0 <= m[name] <= (10 if name == "density" else 1)  # density can exceed 1
    # real held-out images lie on the real manifold; 12 steps of training do not get there
    assert m["precision_real_floor"] > 0.6 and m["recall_real_floor"] > 0.6
    assert m["precision"] < m["precision_real_floor"]
    assert "fid_position" not in m and 0 <= m["class_accuracy"] <= 1 and len(m["class_accuracy_per_class"]) == 10
    # the evaluator, a classifier of real digits, is surer of real held-out digits than of 12-step samples
    assert 0.1 <= m["confidence"] < m["confidence_real_floor"] <= 1 and 1 <= m["classifier_score"] <= 10
    assert m["classifier_score_real_floor"] > m["classifier_score"]
    assert 0 <= m["copy_share"] <= 1 and m["fid_ci95"][0] < m["fid"] < m["fid_ci95"][1]
    assert m["resolution"] == 16 and set(m["fid_per_class"]) == set(m["fid_per_class_real_floor"]) == set(
        m["class_accuracy_per_class"])
    assert all(m["fid_per_class"][c] > m["fid_per_class_real_floor"][c] for c in m["fid_per_class"])
    # pictures: a row of samples per class, the memorisation panel
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"samples.png", "memorisation.png"}
    md = generation_markdown(m)
    assert md.startswith(f"FID {m['fid']:.3f} is {m['fid_vs_floor']}x the real-data floor")
    assert f"precision {m['precision']:.2f}" in md and f"recall {m['recall']:.2f}" in md
    assert "| **trained generator** |" in md and "| untrained generator (ceiling) |" in md
    assert f"the evaluator is on average {m['confidence']:.1%} sure" in md and "| confidence |" in md
    assert "Memorisation:" in md and "| classified as asked |" in md
    # the protocol is stamped: which weights, which real images, the feature space and how images reach it
    assert m["generator"] == f"EMA weights at the last step ({params.train.steps}, models/generator.pt)"
    assert m["real_split"].startswith("training split") and m["resize"].startswith("none")
    assert m["feature_dim"] == params.evaluate.evaluator.features < m["num_samples"]
    assert "fewer images than feature dimensions" not in md.lower()  # more samples than dimensions: no warning
    warned = generation_markdown(m | {"feature_dim": 4096})
    assert f"**FID from fewer images than feature dimensions** ({m['num_samples']} per set, 4096-d" in warned
    assert evaluate(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared_digits, comparison_png=None,
                    figures_dir=None) == m


def test_a_model_with_classes_from_the_noise_is_judged_by_the_class_each_z_names(prepared_digits, tmp_path):
    """Its samples have a class (the argmax of z's first K entries): the share the evaluator classifies as
    that class, per class too, and the sample grid has a row per class made from latents of that class."""
    from pipeline.metrics.probe import generate
    from pipeline.metrics.suite import evaluate, generation_markdown
    from pipeline.models.artifact import load_generator
    from pipeline.training.runner import TrainPaths, train

    params = tiny_params(model={"classes_from_noise": True}, evaluate={"evaluator": {"steps": 150, "batch_size": 64}})
    train_evaluator(params.evaluate.evaluator, load_split(prepared_digits, "train"),
                    load_split(prepared_digits, "val"), tmp_path / "ev.pt", progress=False)  # fmt: skip
    paths = TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                       live_dir=None, samples=tmp_path / "s.png")  # fmt: skip
    train(params, paths, progress=False)
    m = evaluate(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared_digits, comparison_png=None,
                 figures_dir=tmp_path / "figures")  # fmt: skip
    # the same numbers, computed here from the samples the suite draws (seed + 1) and the class each z names
    g, spec = load_generator(tmp_path / "g.pt")
    assert spec["num_classes"] == 0 and spec["noise_classes"] == 10
    n = len(load_split(prepared_digits, "val").labels)
    images, classes = generate(g, n, spec["model"]["latent_dim"], 0, params.seed + 1)
    z = torch.randn(n, spec["model"]["latent_dim"], generator=torch.Generator().manual_seed(params.seed + 1))
    assert torch.equal(classes, z[:, :10].argmax(1))
    net, _ = load_evaluator(tmp_path / "ev.pt")
    with torch.no_grad():
        hit = (net(images).argmax(1) == classes).float()
    assert m["class_accuracy"] == pytest.approx(float(hit.mean()), abs=1e-4)
    assert m["class_accuracy_per_class"] == pytest.approx(
        {str(c): float(hit[classes == c].mean()) for c in range(10)}, abs=1e-4)
    assert set(m["fid_per_class"]) <= {str(c) for c in range(10)}
    assert "Samples classified as their class (asked for, or named by their noise)" in generation_markdown(m)
    assert (tmp_path / "figures" / "samples.png").is_file()


def test_prdc_prints_nothing_even_where_print_itself_is_replaced(monkeypatch, capsys):
    """Prefect's log_prints replaces builtins.print inside a task, so redirecting stdout did not keep prdc's
    'Num real: 385 Num fake: 385' out of every evaluate run's log."""
    import builtins

    said = []
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: said.append(args))
    gen = torch.Generator().manual_seed(0)
    scores = prdc(torch.randn(40, 4, generator=gen), torch.randn(40, 4, generator=gen))
    assert set(scores) == {"precision", "recall", "density", "coverage"}
    assert said == [] and capsys.readouterr().out == ""


def test_evaluation_runs_where_evaluate_device_says_and_agrees_with_the_cpu(prepared_digits, tmp_path):
    """evaluate.device: auto is the GPU when one is usable, cpu forces the CPU; cuda without a GPU is one
    line naming the key. With a GPU the numbers agree with the CPU's within 1e-3 relative (FID, and the
    others within 1e-3 absolute); without one, auto is the CPU, to the bit."""
    from pipeline.errors import UserError
    from pipeline.metrics.suite import evaluate
    from pipeline.training.runner import TrainPaths, train

    params = tiny_params(train={"fid_every": 0})
    train_evaluator(params.evaluate.evaluator, load_split(prepared_digits, "train"),
                    load_split(prepared_digits, "val"), tmp_path / "ev.pt", progress=False)  # fmt: skip
    train(params, TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                             live_dir=None, samples=tmp_path / "s.png"), progress=False)  # fmt: skip

    def run(device: str) -> dict:
        p = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"device": device})})
        return evaluate(p, tmp_path / "g.pt", tmp_path / "ev.pt", prepared_digits, comparison_png=None,
                        figures_dir=None)  # fmt: skip

    on_cpu, auto = run("cpu"), run("auto")
    if not torch.cuda.is_available():
        assert auto == on_cpu
        with pytest.raises(UserError, match=r"^evaluate\.device is 'cuda' but no usable CUDA GPU was found"):
            run("cuda")
        return
    assert auto["fid"] == pytest.approx(on_cpu["fid"], rel=1e-3)
    for key in ("precision", "recall", "coverage", "density", "confidence", "class_accuracy"):
        assert auto[key] == pytest.approx(on_cpu[key], abs=1e-3), key
