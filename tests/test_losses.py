"""Tests for hyperclip_jax/losses.py against plain numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperclip_jax import losses


def _unit_rows(rng, n, d):
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_sigmoid_loss(zimg, ztxt, t_prime, bias):
  logits = np.exp(t_prime) * zimg.astype(np.float64) @ ztxt.astype(np.float64).T + bias
  labels = 2 * np.eye(len(zimg)) - 1
  return np.sum(np.logaddexp(0.0, -labels * logits)) / len(zimg)  # -log σ(x) = log(1 + e^-x)


def _np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _np_softmax_loss(zimg, ztxt, t_prime):
  logits = np.exp(t_prime) * zimg.astype(np.float64) @ ztxt.astype(np.float64).T
  i2t = -np.mean(np.diag(_np_log_softmax(logits, 1)))
  t2i = -np.mean(np.diag(_np_log_softmax(logits, 0)))
  return (i2t + t2i) / 2


@pytest.mark.parametrize("t_prime,bias", [(np.log(10.0), -10.0), (1.3, 0.7), (0.0, 0.0)])
def test_sigmoid_loss_matches_numpy_reference(t_prime, bias):
  rng = np.random.default_rng(0)
  zimg, ztxt = _unit_rows(rng, 6, 16), _unit_rows(rng, 6, 16)
  got = losses.sigmoid_loss(jnp.asarray(zimg), jnp.asarray(ztxt), t_prime, bias)
  np.testing.assert_allclose(float(got), _np_sigmoid_loss(zimg, ztxt, t_prime, bias), rtol=1e-5)


@pytest.mark.parametrize("t_prime", [np.log(10.0), np.log(100.0), 0.0])
def test_softmax_clip_loss_matches_numpy_reference(t_prime):
  rng = np.random.default_rng(1)
  zimg, ztxt = _unit_rows(rng, 5, 8), _unit_rows(rng, 5, 8)
  got = losses.softmax_clip_loss(jnp.asarray(zimg), jnp.asarray(ztxt), t_prime)
  np.testing.assert_allclose(float(got), _np_softmax_loss(zimg, ztxt, t_prime), rtol=1e-5)


def test_softmax_loss_is_symmetric_mean_of_both_directions():
  rng = np.random.default_rng(2)
  zimg, ztxt = _unit_rows(rng, 4, 8), _unit_rows(rng, 4, 8)
  a = losses.softmax_clip_loss(jnp.asarray(zimg), jnp.asarray(ztxt), 2.0)
  b = losses.softmax_clip_loss(jnp.asarray(ztxt), jnp.asarray(zimg), 2.0)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_sigmoid_loss_at_siglip_init_is_about_ten_per_example():
  # t = 10, b = -10, near-orthogonal random unit vectors: logits ≈ -10 everywhere, so each of the N positives
  # costs ≈ log(1 + e^10) ≈ 10 and each of the N(N-1) negatives ≈ log(1 + e^-10) ≈ 4.5e-5; divided by N.
  rng = np.random.default_rng(3)
  n, d = 8, 4096
  zimg, ztxt = _unit_rows(rng, n, d), _unit_rows(rng, n, d)
  got = float(losses.sigmoid_loss(jnp.asarray(zimg), jnp.asarray(ztxt), np.log(10.0), -10.0))
  np.testing.assert_allclose(got, _np_sigmoid_loss(zimg, ztxt, np.log(10.0), -10.0), rtol=1e-5)
  orthogonal = (n * np.logaddexp(0, 10.0) + n * (n - 1) * np.logaddexp(0, -10.0)) / n
  assert abs(got - orthogonal) < 0.5  # |cos| ~ 1/sqrt(d) = 0.016 moves each logit by ~0.16


def test_losses_compute_in_float32_from_bfloat16_inputs():
  rng = np.random.default_rng(4)
  zimg, ztxt = _unit_rows(rng, 4, 8), _unit_rows(rng, 4, 8)
  for fn in (losses.sigmoid_loss, losses.softmax_clip_loss):
    got = fn(jnp.asarray(zimg, jnp.bfloat16), jnp.asarray(ztxt, jnp.bfloat16), 1.0, -1.0)
    assert got.dtype == jnp.float32 and got.shape == ()


def test_losses_are_invariant_to_permuting_pairs_jointly():
  rng = np.random.default_rng(5)
  zimg, ztxt = _unit_rows(rng, 7, 8), _unit_rows(rng, 7, 8)
  perm = rng.permutation(7)
  for fn in (losses.sigmoid_loss, losses.softmax_clip_loss):
    a = fn(jnp.asarray(zimg), jnp.asarray(ztxt), 1.5, -3.0)
    b = fn(jnp.asarray(zimg[perm]), jnp.asarray(ztxt[perm]), 1.5, -3.0)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    # Permuting only one side breaks the pairing and changes the loss.
    c = fn(jnp.asarray(zimg[perm]), jnp.asarray(ztxt), 1.5, -3.0)
    assert abs(float(a) - float(c)) > 1e-3


def test_gradients_are_finite_and_match_finite_differences_for_temperature_and_bias():
  rng = np.random.default_rng(6)
  zimg, ztxt = jnp.asarray(_unit_rows(rng, 4, 8)), jnp.asarray(_unit_rows(rng, 4, 8))
  loss = jax.jit(lambda zi, zt, t, b: losses.sigmoid_loss(zi, zt, t, b))
  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(zimg, ztxt, jnp.log(10.0), -10.0)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  # Extreme temperature still gives finite grads (log_sigmoid, not log(sigmoid)).
  extreme = jax.grad(loss, argnums=(2, 3))(zimg, ztxt, 8.0, -50.0)
  assert all(bool(jnp.isfinite(g)) for g in extreme)
  eps = 1e-3
  fd_b = (float(loss(zimg, ztxt, 1.0, 0.5 + eps)) - float(loss(zimg, ztxt, 1.0, 0.5 - eps))) / (2 * eps)
  np.testing.assert_allclose(float(jax.grad(loss, argnums=3)(zimg, ztxt, 1.0, 0.5)), fd_b, rtol=1e-2)
  soft = jax.grad(losses.softmax_clip_loss, argnums=(0, 1, 2))(zimg, ztxt, jnp.log(100.0))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in soft)


def test_contrastive_accuracy_counts_rows_whose_argmax_is_the_diagonal():
  eye = np.eye(4, dtype=np.float32)
  assert float(losses.contrastive_accuracy(jnp.asarray(eye), jnp.asarray(eye))) == 1.0
  ztxt = eye[[1, 0, 2, 3]]  # images 0 and 1 now point at each other's text
  assert float(losses.contrastive_accuracy(jnp.asarray(eye), jnp.asarray(ztxt))) == 0.5


def test_get_loss_registry_and_unknown_name():
  assert losses.get_loss("sigmoid") is losses.sigmoid_loss
  assert losses.get_loss("softmax") is losses.softmax_clip_loss
  with pytest.raises(ValueError, match=r"'sigmod' is unknown; known: sigmoid, softmax"):
    losses.get_loss("sigmod")


def test_mismatched_shapes_are_rejected():
  with pytest.raises(ValueError, match=r"same shape"):
    losses.sigmoid_loss(jnp.zeros((4, 8)), jnp.zeros((3, 8)), 1.0, 0.0)


def _by_hand_group_loss(zimg, ztxt, t_prime, bias, set_size, fn):
  """The per-group dense loss written out: a loop over the groups' [S, S] blocks, averaged over groups."""
  parts = [fn(zimg[i:i + set_size], ztxt[i:i + set_size], t_prime, bias) for i in range(0, len(zimg), set_size)]
  return sum(parts) / len(parts)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_group_scope_equals_per_group_dense_loss_value_and_gradients(name):
  rng = np.random.default_rng(7)
  zimg, ztxt = jnp.asarray(_unit_rows(rng, 12, 8)), jnp.asarray(_unit_rows(rng, 12, 8))
  t, b = jnp.float32(1.2), jnp.float32(-2.0)
  dense = losses.LOSSES[name]
  group = losses.get_loss(name, scope="group", set_size=4)
  by_hand = lambda zi, zt, t, b: _by_hand_group_loss(zi, zt, t, b, 4, dense)
  want, want_g = jax.value_and_grad(by_hand, argnums=(0, 1, 2, 3))(zimg, ztxt, t, b)
  got, got_g = jax.jit(jax.value_and_grad(group, argnums=(0, 1, 2, 3)))(zimg, ztxt, t, b)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)
  # numpy: the sigmoid terms summed over the three blocks / N, the softmax mean over groups
  ref = _np_sigmoid_loss if name == "sigmoid" else lambda zi, zt, t, b: _np_softmax_loss(zi, zt, t)
  zi, zt = np.asarray(zimg), np.asarray(ztxt)
  np.testing.assert_allclose(float(got), np.mean([ref(zi[i:i + 4], zt[i:i + 4], 1.2, -2.0) for i in (0, 4, 8)]),
                             rtol=1e-5)
  # the cross-group pairs are not scored: moving one group's texts far from the other groups' images is free
  assert abs(float(got) - float(dense(zimg, ztxt, t, b))) > 1e-3


def test_group_scope_ignores_other_groups_texts():
  rng = np.random.default_rng(8)
  zimg, ztxt = _unit_rows(rng, 8, 8), _unit_rows(rng, 8, 8)
  group = losses.get_loss("sigmoid", scope="group", set_size=4)
  swapped = ztxt.copy()
  swapped[4:] = _unit_rows(rng, 4, 8)  # group 1's texts change: the loss moves by group 1's change alone
  a = float(group(jnp.asarray(zimg), jnp.asarray(ztxt), 1.0, -1.0))
  c = float(group(jnp.asarray(zimg), jnp.asarray(swapped), 1.0, -1.0))
  g1 = lambda zt: float(losses.sigmoid_loss(jnp.asarray(zimg[4:]), jnp.asarray(zt[4:]), 1.0, -1.0))
  assert abs(g1(swapped) - g1(ztxt)) > 1e-3
  np.testing.assert_allclose(c - a, (g1(swapped) - g1(ztxt)) / 2, rtol=1e-5, atol=1e-6)


def test_group_scope_bad_arguments():
  with pytest.raises(ValueError, match=r"loss scope='pairs' is unknown; known: batch, group"):
    losses.get_loss("sigmoid", scope="pairs", set_size=4)
  with pytest.raises(ValueError, match=r"needs the model's set_size"):
    losses.get_loss("sigmoid", scope="group")
  with pytest.raises(ValueError, match=r"N divisible by set_size=4"):
    losses.get_loss("sigmoid", scope="group", set_size=4)(jnp.zeros((6, 8)), jnp.zeros((6, 8)), 0.0, 0.0)
