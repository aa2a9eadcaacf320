"""The paper's toy problems (latentinv.toys) against their formulas: the eight's parametrisation and
noise, the toy VAE's training and the SGD paths written out by hand (round 4 of
docs/mutation_audit.md; the plots of these toys are tested in test_plotting)."""
import math

import numpy as np
import torch

from latentinv import toys
from latentinv.nn import build_vae


def test_eight_covers_both_lobes_in_four_equal_quadrants():
    """t uniform in [0, 2 pi) runs once round the lemniscate: without noise each quadrant of the plane
    holds a quarter of the points (4000 points: 0.25 +- 0.03), the right lobe x > 0 and the left x < 0."""
    x, y = toys.make_eight_manifold(4000, noise=0.0, random_state=0).T
    for sx in (1, -1):
        for sy in (1, -1):
            assert abs(np.mean((sx * x > 0) & (sy * y > 0)) - 0.25) < 0.03, (sx, sy)


def test_eight_noise_is_additive_gaussian_of_the_given_std():
    """For one seed the points are the same curve points plus noise * eps with one draw eps: (X(s) - X(0)) / s
    is the same for every s, with mean 0 and standard deviation 1 (4000 points x 2: +- 0.05)."""
    clean = toys.make_eight_manifold(4000, noise=0.0, random_state=3)
    eps = [(toys.make_eight_manifold(4000, noise=s, random_state=3) - clean) / s for s in (0.1, 0.3)]
    np.testing.assert_allclose(eps[0], eps[1], rtol=0, atol=1e-12)
    assert abs(eps[0].mean()) < 0.05 and abs(eps[0].std() - 1.0) < 0.05


def test_toy_vae_training_is_the_step_written_out():
    """fit_toy_vae written out: data standardised per feature, the identity "mlp" VAE seeded from the
    seed, each iteration a batch of min(batch_size, n) indices drawn with replacement, z = mu + sqrt(alpha)
    sigma eps, squared error summed plus beta times the mean KL, Adam; encode and decode undo the
    standardisation (data centred away from 0)."""
    X = toys.make_eight_manifold(30, random_state=0) * [1.0, 3.0] + [5.0, -3.0]
    alpha, beta = 0.25, 2.0
    toy = toys.fit_toy_vae(X, alpha=alpha, beta=beta, hidden_size=8, n_iterations=3, batch_size=50,
                           learning_rate=1e-2, random_state=4)
    seed = int(np.random.RandomState(4).randint(np.iinfo(np.int32).max))   # sklearn check_random_state(4)
    mean, scale = X.mean(0), X.std(0)
    data = torch.tensor((X - mean) / scale, dtype=torch.float32)
    module = build_vae("mlp", 2, 2, hidden_size=8, output_activation="identity", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    rows = []
    for _ in range(3):
        xb = data[torch.randint(0, 30, (30,), generator=gen)]
        mu, logvar = module.encode(xb)
        eps = torch.randn(mu.shape, generator=gen)
        x_hat = module.decode(mu + math.sqrt(alpha) * torch.exp(0.5 * logvar) * eps)
        rec = ((x_hat - xb) ** 2).sum()
        kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean()
        loss = rec + beta * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append([loss.item(), rec.item(), kl.item()])
    np.testing.assert_allclose(np.array([toy.history_[k] for k in ("loss", "reconstruction", "kl")]).T, rows,
                               rtol=1e-6)
    for (k, a), b in zip(toy.module.state_dict().items(), module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    np.testing.assert_array_equal(toy.mean_, mean)
    np.testing.assert_array_equal(toy.scale_, scale)
    module.eval()
    with torch.no_grad():
        mu = module.encode(data)[0].double().numpy()
        decoded = module.decode(torch.tensor(mu, dtype=torch.float32)).double().numpy() * scale + mean
    np.testing.assert_allclose(toy.encode(X), mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(toy.decode(mu), decoded, rtol=1e-6, atol=1e-6)


def test_full_batch_sgd_steps_down_the_squared_misfit():
    """Without regularisation and with all the data, one SGD step is z - lr grad(misfit(z)**2), misfit being
    the data RMSE of ToyLatentProblem (the gradient here by central differences of misfit)."""
    problem = toys.ToyLatentProblem()
    assert problem.misfit(problem.z_true) == 0.0
    z0 = np.array([0.3, 0.2])
    path = toys.sgd_toy_paths(problem, [z0], regularization="none", lr=0.05, n_epochs=1)[0]
    h = 1e-6
    grad = [(problem.misfit(z0 + h * e) ** 2 - problem.misfit(z0 - h * e) ** 2) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(path[1], z0 - 0.05 * np.array(grad), rtol=1e-7, atol=1e-9)


def test_minibatch_sgd_paths_are_written_out():
    """sgd_toy_paths with batches of 5 of the 24 data (4 per epoch, drawn without replacement from one
    permutation per epoch and start), the origin penalty lam ||z||^2 with lam decaying after every
    iteration and lr after every epoch, written out in NumPy with the analytic gradient of
    sum_batch(residual^2) / 5 + lam ||z||^2."""
    problem = toys.ToyLatentProblem()
    starts = np.array([[0.3, 0.2], [-1.0, 0.5]])
    paths = toys.sgd_toy_paths(problem, starts, regularization="origin", lam=0.3, lam_decay=0.5, lr=0.05,
                               lr_decay=0.5, batch_size=5, n_epochs=2, random_state=7)
    assert paths.shape == (2, 9, 2)
    rng = np.random.default_rng(np.random.RandomState(7).randint(np.iinfo(np.int32).max))
    W, b, G, d = problem.W, problem.b, problem.G, problem.data
    for start, path in zip(starts, paths):
        z, lr, lam, expected = start.copy(), 0.05, 0.3, [start.copy()]
        for _ in range(2):
            order = rng.permutation(24)
            for k in range(4):
                rows = order[5 * k:5 * (k + 1)]
                t = np.tanh(W @ z + b)
                r = G[rows] @ t - d[rows]
                z = z - lr * (2 / 5 * W.T @ ((1 - t ** 2) * (G[rows].T @ r)) + 2 * lam * z)
                lam *= 0.5
                expected.append(z)
            lr *= 0.5
        np.testing.assert_allclose(path, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------ the trial of 2026-12-01 (plotting, toys)
def test_ring_radius_is_the_chi_mean_and_refuses_non_dimensions():
    """E[chi_d] = sqrt(2) Gamma((d + 1) / 2) / Gamma(d / 2), written with log-gamma here; 0 and -1 gave
    NaN and 2.5 was taken as 2."""
    import pytest

    for d in (1, 2, 3, 20, 200):
        expected = math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
        assert abs(toys.ring_radius(d) - expected) < 1e-12 * expected
    assert toys.ring_radius(np.int64(20)) == toys.ring_radius(20.0) == toys.ring_radius(20)
    for bad in (0, -1, 2.5, "3", True, np.nan, None):
        with pytest.raises(ValueError, match=r"ring_radius: n_components must be an int >= 1"):
            toys.ring_radius(bad)


def test_eight_manifold_refuses_bad_sizes_noise_and_scale():
    """n_samples=2.5 gave 2 points, '10' and True were taken, noise=inf gave infinite data, scale 0 a
    point (plus noise) and scale NaN NaN data, all without a word."""
    import pytest

    for kw, name in ((dict(n_samples=2.5), "n_samples"), (dict(n_samples="10"), "n_samples"),
                     (dict(n_samples=True), "n_samples"), (dict(n_samples=0), "n_samples"),
                     (dict(noise=np.inf), "noise"), (dict(noise=-1.0), "noise"), (dict(noise="a"), "noise"),
                     (dict(scale=0.0), "scale"), (dict(scale=-2.0), "scale"), (dict(scale=np.nan), "scale")):
        with pytest.raises(ValueError, match=rf"make_eight_manifold: {name} must be"):
            toys.make_eight_manifold(**{"n_samples": 5, **kw})
    X = toys.make_eight_manifold(np.int64(7), noise=0, scale=3, random_state=2)
    assert X.shape == (7, 2) and np.abs(X[:, 0]).max() <= 3.0


def test_sgd_toy_paths_refuses_inputs_that_gave_no_path_or_a_bare_error():
    """batch_size=0 was a ZeroDivisionError, batch_size=-2 and n_epochs=-1 a path of its start alone,
    lr NaN a NaN path, z_inits of 3 columns torch's 'size mismatch', an empty z_inits numpy's 'need at
    least one array to stack'."""
    import pytest

    problem = toys.ToyLatentProblem()
    z = [[0.3, -0.2]]
    for kw, name in ((dict(batch_size=0), "batch_size"), (dict(batch_size=-2), "batch_size"),
                     (dict(batch_size=2.5), "batch_size"), (dict(n_epochs=-1), "n_epochs"),
                     (dict(lr=np.nan), "lr"), (dict(lr=0.0), "lr"), (dict(lr_decay=-1.0), "lr_decay"),
                     (dict(lam=-1.0), "lam"), (dict(lam_decay=np.inf), "lam_decay")):
        with pytest.raises(ValueError, match=rf"sgd_toy_paths: {name} must be"):
            toys.sgd_toy_paths(problem, z, **{"n_epochs": 1, **kw})
    for bad in (np.zeros((2, 3)), np.zeros(3), np.zeros((0, 2)), [[np.nan, 0.0]]):
        with pytest.raises(ValueError, match=r"sgd_toy_paths: z_inits must have shape \(n_starts >= 1, 2\)"):
            toys.sgd_toy_paths(problem, bad, n_epochs=1)
    # n_epochs=0 is a path of its start; one start of shape (2,) is one path; every path starts at z_init
    assert toys.sgd_toy_paths(problem, [0.1, 0.2], n_epochs=0).tolist() == [[[0.1, 0.2]]]
    paths = toys.sgd_toy_paths(problem, [[0.3, -0.2], [1.5, 1.0]], batch_size=5, n_epochs=3, random_state=0)
    assert paths.shape == (2, 1 + 3 * (24 // 5), 2)
    np.testing.assert_array_equal(paths[:, 0], [[0.3, -0.2], [1.5, 1.0]])


def test_fit_toy_vae_refuses_bad_weights_sizes_and_data():
    """alpha=-1 was 'math domain error', alpha NaN and NaN data trained to NaN losses, beta=-1 (a KL
    rewarded) and n_components=0 trained without a word, batch_size=0 was torch's reshape error."""
    import pytest

    X = toys.make_eight_manifold(20, random_state=0)
    for kw, name in ((dict(alpha=-1.0), "alpha"), (dict(alpha=np.nan), "alpha"), (dict(beta=-1.0), "beta"),
                     (dict(n_components=0), "n_components"), (dict(batch_size=0), "batch_size"),
                     (dict(hidden_size=0), "hidden_size"), (dict(n_iterations=-1), "n_iterations"),
                     (dict(learning_rate=np.nan), "learning_rate")):
        with pytest.raises(ValueError, match=rf"fit_toy_vae: {name} must be"):
            toys.fit_toy_vae(X, **{"n_iterations": 2, **kw})
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"fit_toy_vae: X must be finite"):
        toys.fit_toy_vae(Xn, n_iterations=2)
