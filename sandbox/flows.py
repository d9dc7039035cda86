"""Central flows: the time-averaged path of an optimizer at the edge of stability, in one jit.

Full-batch GD at learning rate lr oscillates along the top Hessian eigenvectors once the
sharpness reaches 2 / lr, and the oscillation pushes the sharpness back down (the edge of
stability). Cohen, Damian, Talwalkar, Kolter and Lee (ICLR 2025, "Understanding Optimization
in Deep Learning with Central Flows") model the *time-averaged* trajectory by an ODE, the
central flow. `run` integrates it beside the optimizer itself and the stable flow, for a
scalar `loss` of a parameter pytree. One unit of flow time is one optimizer step.

Optimizers, each written as preconditioned GD w <- w - P^-1 g with P diagonal:

    gd              P = I / lr
    rmsprop         nu <- b2 nu + (1 - b2) g^2,   P = diag(sqrt(nu) + eps) / lr
    scalar_rmsprop  nu <- b2 nu + (1 - b2) |g|^2, P = (sqrt(nu) + eps) / lr  (one scalar)

with nu updated before the step that uses it (Optax's `scale_by_rms`, eps outside the root)
and started at nu_0 = g_0^2 (so every flow starts from the same state). The *effective
sharpness* is the top of the spectrum of P^-1 H; the step is stable along an eigenvector
while its eigenvalue is below 2. `FlowTrace.eigs` records the top `num_eigs` of them and
`FlowTrace.eig_next` the next one.

The three `flow`s:

- "discrete": the optimizer (Optax's `sgd` and `scale_by_rms`; scalar RMSProp by hand).
- "stable": the flow the optimizer follows while it is stable,
      dw/dt = -P^-1 grad L,    dnu/dt = (1 - b2) / b2 (g^2 - nu)
  (the 1 / b2: nu_t is the state the step at t uses, nu_t - nu_{t-1} = (1 - b2)/b2 (g_t^2 -
  nu_t)). Integrated by RK4 with ceil(max eig / DT_THETA) substeps per unit time, sized to
  the effective sharpness at the start of each step (RK4's error on an eigen-direction is
  about (dt theta)^5 / 120 per substep).
- "central": the iterate oscillates around the flow with covariance Sigma = U X U^T in the
  span of the critical generalized eigenvectors U (H U = P U Theta, U^T P U = I, eigenvalues
  within CRITICAL of 2). Time-averaging the gradient and the squared gradient over the
  oscillation to second order gives
      dw/dt  = -P^-1 [grad L + 1/2 grad <H, Sigma>],
      dnu/dt = (1 - b2)/b2 [g^2 + diag(H Sigma H) - nu]   (rmsprop; |g|^2 + tr(H Sigma H)
                                                            for scalar_rmsprop)
  with grad <H, Sigma> = sum_ab X_ab grad(u_a^T H u_b) (jvps of Hessian-vector products)
  and H Sigma H ~ 4 P Sigma P on the critical space (H U = 2 P U there). X is fixed by three
  conditions: X >= 0 (a covariance), the constraint matrix C = U^T (2P - H) U stays >= 0
  (no effective eigenvalue above 2) and X is zero where C is not (complementarity). With C
  predicted dt ahead, C + dt dC/dt = A + B[X], linear in X, this is the small
  semidefinite complementarity problem
      X >= 0,   A + B[X] >= 0,   <X, A + B[X]> = 0
  (`complementarity`), solved inside JAX (`FlowTrace.cone_residual`: how well). Its B is
  positive semidefinite, so it is the optimality condition of
  min_{X >= 0} 1/2 <X, B[X]> + <A, X>.
  The time-averaged loss it predicts for the oscillating optimizer is
      predicted = L(w) + 1/2 <H, Sigma> = L(w) + 1/2 tr(X Theta)
  (for GD: L(w) + tr(Sigma) / lr). Each step solves the cone problem CONE_SOLVES times
  (dt = 1 / CONE_SOLVES: one unit of time ahead by default; on the study's network four
  solves per step gave the same losses and eigenvalues to four digits), freezes the
  oscillation terms and integrates the rest by the stable flow's RK4 substeps, so below
  threshold (X = 0) it is the stable flow.

Eigenvectors come from a block Rayleigh-Ritz step warm-started from the last step's U: the
central flow holds several eigenvalues at exactly 2, and a single-vector Lanczos run sees a
repeated eigenvalue once, so the k + 1 previous Ritz vectors and NUM_BLOCKS - 1 Krylov blocks
grown from them (each block one vmapped batch of HVPs) are projected at once. The first step
takes FIRST_BLOCKS such steps from a random block; problems with n <= 2 (k + 1) parameters
take the matrix itself from n matvecs. Costs per step:
`FlowTrace.matvecs` counts the Hessian-vector and third-derivative products, `grads` the
gradients.

Heavy-ball momentum (threshold (2 + 2 beta) / lr) is not one of the optimizers: its buffer v
does not enter the effective sharpness and dw/dt = -lr v holds no Sigma, so the condition
that fixes Sigma appears only one time derivative later; studies/central_flows.py explains
the quasi-static candidate and why it is left out.

    trace = flows.run(loss, params, flow="central", lr=0.05, steps=500)
    trace.loss, trace.predicted   # [500] L(w(t)) and the predicted time-averaged loss
    trace.eigs                    # [500, 5] top eigenvalues of P^-1 H (threshold 2)
    trace.eig_next                # [500] the 6th: below 2 CRITICAL, or num_eigs is too small
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from sandbox import checks, hessian
from sandbox.types import Array, Key, PyTree

FLOWS = ("discrete", "stable", "central")
OPTIMIZERS = ("gd", "rmsprop", "scalar_rmsprop")
DEFAULT_BETA2 = 0.99  # rmsprop's b2 where none is given (the paper's running example)
# Substeps per unit time: ceil(largest effective eigenvalue / DT_THETA), at most MAX_SUBSTEPS.
# RK4 at dt theta = 1 damps an eigen-direction by 0.375 against exp(-1) = 0.368; on the
# study's network (GD at 0.16, 800 steps) DT_THETA = 1 and 0.5 gave the same central flow
# to 1e-4 (loss, prediction and eigenvalues) at half the gradients.
DT_THETA = 1.0
MAX_SUBSTEPS = 256  # RK4 is unstable past dt theta = 2.78: a sharper flow is not followed
# An effective eigenvalue above CRITICAL (of 2) joins the cone problem; the public code of
# the paper uses 1.95 for GD.
CRITICAL = 0.975
# Warm-started block Rayleigh-Ritz: NUM_BLOCKS Krylov blocks of k + 1 vectors per step;
# FIRST_BLOCKS such steps from a random block on the first step.
NUM_BLOCKS = 2
FIRST_BLOCKS = 20
# Cone problems (with their eigen-solve and third derivatives) per unit of time.
CONE_SOLVES = 1
# The cone solver's smoothing Newton fallback runs at most this many times `max_iter`.
SMOOTHING_ITER = 10
_HIGHEST = lax.Precision.HIGHEST


class FlowTrace(NamedTuple):
    """One run of `run` (T = steps, k = num_eigs).

    Attributes:
      loss: [T] loss at the start of each step.
      predicted: [T] the time-averaged loss of the oscillating optimizer that the central
        flow predicts, L(w) + 1/2 <H, Sigma>; equal to `loss` for the stable flow (Sigma =
        0), NaN for the discrete run.
      eigs: [T, k] top eigenvalues of P^-1 H at the start of each step, descending (for
        the discrete run with the preconditioner its step uses).
      eig_next: [T] the (k + 1)-th of them (the eigen-solve's next Ritz value, a lower
        bound), NaN where k is the number of parameters. The cone problem sees only the top
        k: once this one passes 2 CRITICAL, a central flow needs a larger `num_eigs`.
      lr_eff: [T] the effective learning rate: lr for gd, lr / (sqrt(nu) + eps) for
        scalar_rmsprop, the geometric mean over parameters of lr / (sqrt(nu) + eps) for
        rmsprop.
      sigma: [T] 1/2 tr(X Theta) = predicted - loss, the oscillation's share of the loss
        (0 for discrete and stable).
      substeps: [T] integration substeps per step (1 for discrete).
      matvecs: [T] Hessian-vector plus third-derivative products per step.
      grads: [T] gradient evaluations per step.
      cone_residual: [T] the largest `cone_residual` of the step's cone problems (0 where
        none was solved: no eigenvalue above 2 CRITICAL, and for discrete and stable).
      params: the parameters at the end (a pytree like w0).
      nu: the final optimizer state nu ([n] for rmsprop, scalar otherwise; 0 for gd).
    """

    loss: Array
    predicted: Array
    eigs: Array
    lr_eff: Array
    sigma: Array
    substeps: Array
    matvecs: Array
    grads: Array
    eig_next: Array
    cone_residual: Array
    params: PyTree
    nu: Array


def run(
    loss: Callable,
    w0: PyTree,
    *,
    flow: str,
    optimizer: str = "gd",
    lr: Any,
    steps: int,
    num_eigs: int = 5,
    beta2: float | None = None,
    eps: float = 0.0,
    key: Key | None = None,
) -> FlowTrace:
    """Runs the optimizer (`flow="discrete"`) or integrates its stable or central flow.

    Args:
      loss: a scalar function of a parameter pytree (full batch; it closes over its data).
        Pass the same function object to reuse the compiled program.
      w0: the initial parameters (floating point); everything runs in their dtype.
      flow: "discrete", "stable" or "central".
      optimizer: "gd", "rmsprop" or "scalar_rmsprop".
      lr: the learning rate, positive and finite (may be traced: `jax.vmap` over it).
      steps: T >= 1 steps (units of flow time).
      num_eigs: k, the number of effective eigenvalues tracked (1 <= k <= parameters); only
        these can enter the central flow's cone problem (`FlowTrace.eig_next` shows whether
        the next one stays below it).
      beta2: rmsprop's decay b2 in (0, 1); default DEFAULT_BETA2. Not for gd.
      eps: rmsprop's eps >= 0, added to sqrt(nu).
      key: draws the first eigen-solve's start vector; default jax.random.key(0).

    Returns:
      A `FlowTrace`.
    """
    if not callable(loss):
        raise ValueError(f"`loss` must be a function of the parameters, got {loss!r}")
    if flow not in FLOWS:
        raise ValueError(f"`flow` must be one of {', '.join(FLOWS)}, got {flow!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    lr = checks.step_size("lr", lr)
    steps = checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX)
    n = hessian.dimension(w0, "w0")
    num_eigs = checks.integer("num_eigs", num_eigs, minimum=1, maximum=n)
    if optimizer == "gd":
        if beta2 is not None:
            raise ValueError("`beta2` applies to rmsprop and scalar_rmsprop only, got it for gd")
        beta2 = DEFAULT_BETA2  # unused
    elif beta2 is None:
        beta2 = DEFAULT_BETA2
    elif not isinstance(beta2, jax.core.Tracer) and not (
        np.isscalar(beta2) and not isinstance(beta2, bool) and 0 < beta2 < 1
    ):
        raise ValueError(f"`beta2` must be in (0, 1), got {beta2!r}")
    if not isinstance(eps, jax.core.Tracer) and not (
        np.isscalar(eps) and not isinstance(eps, bool) and np.isfinite(eps) and eps >= 0
    ):
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps!r}")
    key = jax.random.key(0) if key is None else key
    flat, unravel = ravel_pytree(w0)
    dtype = flat.dtype
    leaves, treedef = jax.tree.flatten(w0)
    structure = (treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))
    compiled = _compiled(loss, structure, flow, optimizer, steps, num_eigs)
    trace = compiled(
        flat, jnp.asarray(lr, dtype), jnp.asarray(beta2, dtype), jnp.asarray(eps, dtype), key
    )
    return trace._replace(params=unravel(trace.params))


# ----------------------------------------------------------------------------- the cone problem


def complementarity(
    A: Array,
    B: Array,
    *,
    mask: Array | None = None,
    X0: Array | None = None,
    max_iter: int = 50,
) -> Array:
    """X solving the semidefinite complementarity problem SDCP(A, B):

        X >= 0,   Z = A + B[X] >= 0,   <X, Z> = 0,   B[X]_ij = sum_ab B_ijab X_ab

    for symmetric A [k, k] and B [k, k, k, k] positive semidefinite as an operator on
    symmetric matrices (then X minimizes 1/2 <X, B[X]> + <A, X> over the PSD cone; unique
    when B is definite). Pure JAX, jittable and vmappable.

    Method: semismooth Newton on the natural residual F(X) = X - Proj_PSD(X - Z(X)), whose
    zeros are the solutions; the Jacobian uses the derivative of the eigenvalue projection
    (Loewner divided differences), each step a k^2 x k^2 least-squares solve with a
    backtracking line search on |F|; a projected gradient step where no step size reduces
    |F|. That is fast from a warm start but can stall far from the solution when B is
    ill-conditioned, so where it ends above tolerance a smoothing Newton method takes over
    from its last iterate: Qi, Sun and Zhou's (Math. Program. 87, 2000) on the
    Chen-Harker-Kanzow-Smale smoothed projection, which keeps X and Z positive definite with
    X Z = mu^2 I on the way (the Jacobian is nonsingular for mu > 0 and B >= 0) and drives
    mu to 0 with |F|: globally convergent for B >= 0, quadratic near the solution (it also
    stops where rounding leaves no step size that decreases its merit function). Each
    stops at |F| <= 100 eps (of A and B normalized to unit size on the rows and columns the
    mask selects: `cone_residual`), Newton
    after `max_iter` iterations, smoothing Newton after SMOOTHING_ITER times as many (one
    of 32 random problems with k = 3 whose B has condition number 1e7 took more than 200;
    288 such problems all met the tolerance within 500).

    Args:
      A: [k, k] symmetric.
      B: [k, k, k, k].
      mask: optional bool [k]: X is zero outside the rows and columns it selects.
      X0: optional [k, k] start (e.g. the previous solution).
      max_iter: semismooth Newton iterations at most.

    Returns:
      X [k, k], positive semidefinite; `cone_residual(A, B, X, mask=mask)` says how well it
      meets the conditions.
    """
    An, Bn, a_scale, b_scale, mm = _normalized(A, B, mask)
    k, dtype = An.shape[0], An.dtype
    # solve for Y = X b_scale / a_scale
    Y0 = jnp.zeros_like(An) if X0 is None else jnp.asarray(X0, dtype) * (b_scale / a_scale)
    if mm is not None:
        Y0 = Y0 * mm
    Y0 = jnp.where(jnp.all(jnp.isfinite(Y0)), Y0, 0)  # A = 0: overflow, the solution is 0
    tol = 100 * float(jnp.finfo(dtype).eps)
    eye = jnp.eye(k * k, dtype=dtype)

    def Z(Y):
        return An + (Bn @ Y.reshape(-1)).reshape(k, k)

    def residual(Y):
        return Y - _psd_part(Y - Z(Y))

    def jacobian(Q, Omega):
        """The k^2 x k^2 matrix of E -> E - Q (Omega * Q^T (E - B[E]) Q) Q^T."""

        def J(E):
            E = E.reshape(k, k)
            D = E - (Bn @ E.reshape(-1)).reshape(k, k)
            dP = Q @ (Omega * (Q.T @ D @ Q)) @ Q.T
            return (E - dP).reshape(-1)

        return jax.vmap(J, in_axes=1, out_axes=1)(eye)

    def newton(Y):
        F = residual(Y)
        mu, Q = jnp.linalg.eigh(Y - Z(Y))
        J_m = jacobian(Q, _projection_weights(mu))
        d = jnp.linalg.lstsq(J_m, -F.reshape(-1))[0].reshape(k, k)
        d = 0.5 * (d + d.T)
        d = jnp.where(jnp.all(jnp.isfinite(d)), d, 0)
        ts = 0.5 ** jnp.arange(8, dtype=dtype)
        norms = jax.vmap(lambda t: jnp.linalg.norm(residual(Y + t * d)))(ts)
        f0 = jnp.linalg.norm(F)
        ok = norms <= (1 - 1e-4 * ts) * f0
        i = jnp.argmax(ok)
        gradient_step = _psd_part(Y - Z(Y))  # projected gradient, step 1 / |B| = 1
        return jnp.where(ok[i], Y + ts[i] * d, gradient_step)

    def cond(state):
        Y, it = state
        return (jnp.linalg.norm(residual(Y)) > tol) & (it < max_iter)

    def body(state):
        Y, it = state
        return newton(Y), it + 1

    Y, _ = lax.while_loop(cond, body, (Y0, jnp.zeros((), jnp.int32)))

    # Smoothing Newton (Qi, Sun and Zhou 2000, Algorithm 1) on H(mu, Y) = (mu, F_mu(Y)),
    # F_mu(Y) = Y - Proj_mu(Y - Z(Y)), Proj_mu applying (l + sqrt(l^2 + 4 mu^2)) / 2 to the
    # eigenvalues l; merit psi = mu^2 + |F_mu|^2.
    mu_bar, gamma, sigma = 1.0, 0.5, 1e-4  # gamma mu_bar < 1
    ts = 0.5 ** jnp.arange(40, dtype=dtype)

    def smooth_residual(mu, Y):
        """F_mu(Y), with the eigen-decomposition (lam, Q) of the Y - Z(Y) it projects."""
        lam, Q = jnp.linalg.eigh(Y - Z(Y))
        return Y - (Q * _smoothed_plus(lam, mu)[None, :]) @ Q.T, lam, Q

    def psi(mu, Y):
        return mu * mu + jnp.sum(smooth_residual(mu, Y)[0] ** 2)

    def smooth_step(state):
        Y, mu, it, _ = state
        F, lam, Q = smooth_residual(mu, Y)
        p = mu * mu + jnp.sum(F**2)  # psi(mu, Y)
        beta = gamma * jnp.minimum(1, p)
        root = jnp.sqrt(lam * lam + 4 * mu * mu)
        # dF/dmu = -Q diag(2 mu / sqrt(l^2 + 4 mu^2)) Q^T
        dF_dmu = -(Q * _safe_div(2 * mu, root)[None, :]) @ Q.T
        d_mu = -mu + beta * mu_bar
        J_m = jacobian(Q, _smoothed_weights(lam, mu))
        rhs = -(F + d_mu * dF_dmu).reshape(-1)
        d = jnp.linalg.lstsq(J_m, rhs)[0].reshape(k, k)
        d = 0.5 * (d + d.T)
        d = jnp.where(jnp.all(jnp.isfinite(d)), d, 0)
        trial = jax.vmap(lambda t: psi(mu + t * d_mu, Y + t * d))(ts)
        ok = trial <= (1 - 2 * sigma * (1 - gamma * mu_bar) * ts) * p
        # no step size decreases psi (in exact arithmetic one does): rounding, stop there
        t = jnp.where(jnp.any(ok), ts[jnp.argmax(ok)], 0)
        return Y + t * d, mu + t * d_mu, it + 1, ~jnp.any(ok)

    def smooth_cond(state):
        Y, _, it, stuck = state
        go_on = (jnp.linalg.norm(residual(Y)) > tol) & ~stuck
        return go_on & (it < SMOOTHING_ITER * max_iter)

    start = (Y, jnp.asarray(mu_bar, dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    Y, _, _, _ = lax.while_loop(smooth_cond, smooth_step, start)
    Y = _psd_part(Y - Z(Y))  # a fixed point of the projection: exactly PSD
    X = Y * (a_scale / b_scale)
    return X * mm if mm is not None else X


def cone_residual(A: Array, B: Array, X: Array, *, mask: Array | None = None) -> Array:
    """How far a symmetric X is from solving SDCP(A, B) (`complementarity`): the natural
    residual r = |Y - Proj_PSD(Y - Z)|_F of the problem scaled to |A|_max = |B|_2 = 1 (Y =
    X |B|_2 / |A|_max, Z = (A + B[X]) / |A|_max; with a mask, of the selected rows and
    columns). Zero exactly at the solutions; the smallest eigenvalues of Y and Z are >= -r
    and |<Y, Z>| <= r (|Y| + |Z| + r)."""
    An, Bn, a_scale, b_scale, mm = _normalized(A, B, mask)
    k = An.shape[0]
    X = jnp.asarray(X, An.dtype)
    Y = (X * mm if mm is not None else X) * (b_scale / a_scale)
    Z = An + (Bn @ Y.reshape(-1)).reshape(k, k)
    return jnp.linalg.norm(Y - _psd_part(Y - Z))


def _normalized(A, B, mask):
    """(A / |A|_max [k, k], B / |B|_2 [k^2, k^2], |A|_max, |B|_2, mask matrix or None): A
    and B symmetrized, and restricted to the masked rows and columns: the sizes are the
    selected block's, and outside it A / |A|_max = I, B = 0, whose solution is X_ij = 0
    wherever i or j is off."""
    A = jnp.asarray(A)
    k = A.shape[0]
    dtype = A.dtype
    A = 0.5 * (A + A.T)
    B = jnp.asarray(B, dtype)
    B = 0.5 * (B + B.transpose(1, 0, 2, 3))
    B = 0.5 * (B + B.transpose(0, 1, 3, 2))
    B = 0.5 * (B + B.transpose(2, 3, 0, 1))
    mm, off = None, jnp.zeros((k, k), dtype)
    if mask is not None:
        m = jnp.asarray(mask, dtype)
        mm = m[:, None] * m[None, :]
        B = B * mm[:, :, None, None] * mm[None, None, :, :]
        A, off = A * mm, jnp.diag(1 - m)
    a_scale = jnp.maximum(jnp.max(jnp.abs(A)), jnp.finfo(dtype).tiny)
    B_m = B.reshape(k * k, k * k)
    b_scale = jnp.maximum(jnp.linalg.norm(B_m, 2), jnp.finfo(dtype).tiny)
    return A / a_scale + off, B_m / b_scale, a_scale, b_scale, mm


def _psd_part(M: Array) -> Array:
    """The projection of a symmetric matrix onto the PSD cone (negative eigenvalues -> 0)."""
    mu, Q = jnp.linalg.eigh(0.5 * (M + M.T))
    return (Q * jnp.maximum(mu, 0)[None, :]) @ Q.T


def _projection_weights(mu: Array) -> Array:
    """Divided differences of max(., 0) at the eigenvalues mu: the derivative of the PSD
    projection in the eigenbasis is E -> Omega * E."""
    pos = jnp.maximum(mu, 0)
    dmu = mu[:, None] - mu[None, :]
    dpos = pos[:, None] - pos[None, :]
    same = jnp.abs(dmu) <= 1e-12 * (1 + jnp.abs(mu[:, None]))
    both = (mu[:, None] > 0) & (mu[None, :] > 0)
    return jnp.where(same, both.astype(mu.dtype), dpos / jnp.where(same, 1, dmu))


def _smoothed_plus(lam: Array, mu: Array) -> Array:
    """(l + sqrt(l^2 + 4 mu^2)) / 2, the Chen-Harker-Kanzow-Smale smoothing of max(l, 0)
    (written without the cancellation at l << -mu)."""
    root = jnp.sqrt(lam * lam + 4 * mu * mu)
    neg = _safe_div(2 * mu * mu, root - lam)
    return jnp.where(lam >= 0, 0.5 * (lam + root), neg)


def _smoothed_weights(lam: Array, mu: Array) -> Array:
    """Divided differences of `_smoothed_plus` at the eigenvalues lam (its derivative on the
    diagonal): 1/2 + (l_i + l_j) / (2 (r_i + r_j)), r = sqrt(l^2 + 4 mu^2), exact for any
    pair (the square roots' difference is (l_i^2 - l_j^2) / (r_i + r_j))."""
    root = jnp.sqrt(lam * lam + 4 * mu * mu)
    num = lam[:, None] + lam[None, :]
    den = root[:, None] + root[None, :]
    # mu = 0 and l_i = l_j = 0: the projection's generalized derivative 1/2
    return 0.5 + 0.5 * _safe_div(num, den)


# ----------------------------------------------------------------------------- eigenvectors


def _orthonormal(W: Array, scale: Array) -> Array:
    """Orthonormal columns spanning W's, zero columns for directions below rounding."""
    U, s, _ = jnp.linalg.svd(W, full_matrices=False)
    keep = s > 1e3 * jnp.finfo(W.dtype).eps * scale
    return U * keep[None, :]


def _block_ritz(mv: Callable, Y0: Array, num_blocks: int) -> tuple[Array, Array]:
    """Rayleigh-Ritz on span{Y0, M Y0, .., M^(q-1) Y0} for symmetric M (mv: [n, b] -> M
    [n, b]), each block orthogonalized against the earlier ones. Returns (theta [q b]
    descending, Ritz vectors [n, q b]). The blocks run through one loop body (one copy of
    the matvec in the program)."""
    n, b = Y0.shape
    m = num_blocks * b
    Q = _orthonormal(Y0, jnp.linalg.norm(Y0, axis=0).max())
    Q_all = lax.dynamic_update_slice(jnp.zeros((n, m), Y0.dtype), Q, (0, 0))

    def block(j, state):
        Q, Q_all, W_all = state
        W = mv(Q)
        W_all = lax.dynamic_update_slice(W_all, W, (0, j * b))
        Q = _orthonormal(hessian.project_out(W, Q_all.T), jnp.linalg.norm(W, axis=0).max() + 1e-30)
        Q = _orthonormal(hessian.project_out(Q, Q_all.T), 1.0)
        more = j + 1 < num_blocks  # after the last block there is nothing to append
        at = jnp.minimum((j + 1) * b, m - b)
        Q_all = jnp.where(more, lax.dynamic_update_slice(Q_all, Q, (0, at)), Q_all)
        return Q, Q_all, W_all

    _, Q_all, W_all = lax.fori_loop(0, num_blocks, block, (Q, Q_all, jnp.zeros_like(Q_all)))
    T = jnp.matmul(Q_all.T, W_all, precision=_HIGHEST)
    theta, V = jnp.linalg.eigh(0.5 * (T + T.T))
    theta, V = theta[::-1], V[:, ::-1]
    return theta, jnp.matmul(Q_all, V, precision=_HIGHEST)


# ----------------------------------------------------------------------------- the program


class _Opt(NamedTuple):
    """The optimizer's preconditioner and state equation on flat vectors."""

    name: str
    lr: Array
    beta2: Array
    eps: Array

    def p(self, nu):
        """diag(P) [n] or a scalar: the step is w <- w - g / p."""
        if self.name == "gd":
            return 1 / self.lr
        return (jnp.sqrt(jnp.maximum(nu, 0)) + self.eps) / self.lr

    def sq(self, g):
        """The squared gradient the state averages."""
        return g * g if self.name == "rmsprop" else jnp.vdot(g, g)

    @property
    def kappa(self):
        return (1 - self.beta2) / self.beta2

    def lr_eff(self, nu):
        if self.name == "gd":
            return self.lr
        p = self.p(nu)
        if self.name == "scalar_rmsprop":
            return 1 / p
        return jnp.exp(-jnp.mean(jnp.log(p)))


def _safe_div(a, p):
    """a / p, 0 where p == 0 (a coordinate whose squared gradients were all exactly 0)."""
    return jnp.where(p > 0, a / jnp.where(p > 0, p, 1), 0)


@functools.lru_cache(maxsize=16)  # each entry keeps its `loss`
def _compiled(loss, structure, flow, optimizer, steps, k) -> Callable:
    """The jitted program for one loss, parameter structure (treedef, leaf shapes and
    dtypes) and static settings."""
    treedef, leaves = structure
    template = jax.tree.unflatten(treedef, [jnp.zeros(shape, dt) for shape, dt in leaves])
    unravel = ravel_pytree(template)[1]

    def f(w):
        return loss(unravel(w))

    def go(w0, lr, beta2, eps, key):
        opt = _Opt(optimizer, lr, beta2, eps)
        return _program(f, flow, opt, steps, k, w0, key, CONE_SOLVES)

    return jax.jit(go)


def _program(f, flow, opt: _Opt, steps, k, w0, key, cone_solves):
    n = w0.shape[0]
    dtype = w0.dtype
    b = min(k + 1, n)
    num_blocks = NUM_BLOCKS
    value_and_grad = jax.value_and_grad(f)
    grad = jax.grad(f)

    def hvp(w, v):
        return hessian.hvp(f, w, v)

    def operator(w, nu):
        """(s, mv): M = S H S with S = P^-1/2, on [n, b] blocks."""
        s = _safe_div(1, jnp.sqrt(jnp.broadcast_to(opt.p(nu), (n,))))

        def mv(Q):
            return s[:, None] * jax.vmap(lambda q: hvp(w, s * q), 1, 1)(Q)

        return s, mv

    def eig(w, nu, Y, first):
        """Top b effective eigenpairs warm-started from Y [n, b]: (theta [b], Y [n, b],
        matvecs). One block Rayleigh-Ritz step, FIRST_BLOCKS of them on the first step
        (from a random Y)."""
        _, mv = operator(w, nu)
        if n <= NUM_BLOCKS * b:  # tiny problems: M itself, from n matvecs
            theta, V = jnp.linalg.eigh(mv(jnp.eye(n, dtype=dtype)))
            return theta[::-1][:b], V[:, ::-1][:, :b], jnp.asarray(n, jnp.int32)
        count = jnp.where(first, FIRST_BLOCKS, 1)

        def again(_, state):
            theta, V = _block_ritz(mv, state[1], num_blocks)
            return theta[:b], V[:, :b]

        theta, Y = lax.fori_loop(0, count, again, (jnp.zeros(b, dtype), Y))
        return theta, Y, count * eig_cost

    L0, g0 = value_and_grad(w0)
    nu0 = jnp.zeros((), dtype) if opt.name == "gd" else opt.sq(g0)
    Y0 = jax.random.normal(key, (n, b), dtype)
    eig_cost = num_blocks * b

    if flow == "discrete":
        return _discrete(f, opt, steps, k, w0, nu0, Y0, eig)

    third = _third_derivatives(f, k)

    def rhs(w_, nu_, cw, cnu, g0=None, first=False):
        # the first stage is at the step's start, whose gradient the step already has
        g_ = grad(w_) if g0 is None else lax.cond(first, lambda: g0, lambda: grad(w_))
        dw = -_safe_div(g_, opt.p(nu_)) + cw
        dnu = 0 * nu_ if opt.name == "gd" else opt.kappa * (opt.sq(g_) + cnu - nu_)
        return dw, dnu

    def oscillation(w, nu, g, theta, Y, X_prev, dt):
        """X from the cone problem and the frozen terms it adds: (X, cw [n], cnu, its
        matvecs, the cone problem's residual)."""
        s, _ = operator(w, nu)
        U = s[:, None] * Y[:, :k]  # generalized eigenvectors, U^T P U = I
        th = theta[:k]
        mask = th > 2 * CRITICAL

        def solve(_):
            N = third(w, U, mask)  # [k, k, n]: grad(u_i^T H u_j)
            p = jnp.broadcast_to(opt.p(nu), (n,))
            pinv = _safe_div(1, p)
            # d/dt U^T H U = N . dw/dt,  dw/dt = -pinv (g + 1/2 sum_ab X_ab N_ab)
            Ng = jnp.einsum("ijn,n->ij", N, pinv * g)
            NN = 0.5 * jnp.einsum("ijn,n,abn->ijab", N, pinv, N)
            a = Ng  # the part of -d/dt U^T H U without X
            Bop = NN
            if opt.name != "gd":
                # d/dt U^T P U = sum_n u_in u_jn dp_n/dt,  dp/dt = dnu/dt / (2 lr sqrt nu)
                r = _safe_div(opt.kappa, 2 * opt.lr * jnp.sqrt(nu))
                if opt.name == "rmsprop":
                    a = a + 2 * jnp.einsum("in,jn,n->ij", U.T, U.T, r * (g * g - nu))
                    w4 = 8 * r * p * p
                    Bop = Bop + jnp.einsum("in,jn,an,bn,n->ijab", U.T, U.T, U.T, U.T, w4)
                else:
                    G = jnp.matmul(U.T, U, precision=_HIGHEST)  # = I / p
                    a = a + 2 * r * (jnp.vdot(g, g) - nu) * G
                    # tr(H Sigma H) ~ 4 p^2 tr(U X U^T) = 4 p^2 <G, X>
                    Bop = Bop + 8 * r * p[0] ** 2 * jnp.einsum("ij,ab->ijab", G, G)
            A = 2 * jnp.eye(k, dtype=dtype) - jnp.diag(th) + dt * a
            X = complementarity(A, dt * Bop, mask=mask, X0=X_prev)
            return X, N, cone_residual(A, dt * Bop, X, mask=mask)

        def skip(_):
            return jnp.zeros((k, k), dtype), jnp.zeros((k, k, n), dtype), jnp.zeros((), dtype)

        X, N, res = lax.cond(jnp.any(mask), solve, skip, None)
        p = jnp.broadcast_to(opt.p(nu), (n,))
        cw = -0.5 * _safe_div(jnp.einsum("ab,abn->n", X, N), p)
        if opt.name == "rmsprop":
            cnu = 4 * p * p * jnp.einsum("ab,an,bn->n", X, U.T, U.T)
        elif opt.name == "scalar_rmsprop":
            cnu = 4 * p[0] ** 2 * jnp.vdot(X, jnp.matmul(U.T, U, precision=_HIGHEST))
        else:
            cnu = jnp.zeros((), dtype)
        m = jnp.sum(mask).astype(jnp.int32)  # critical directions: a prefix of theta
        return X, cw, cnu, m * (m + 1) // 2, res

    def integrate(w, nu, g, span, theta, cw, cnu):
        """RK4 over `span` time units with the frozen terms (cw, cnu); substeps sized to
        the effective sharpness theta. Returns (w, nu, substeps)."""
        # 1e-3 of slack: the central flow holds theta at 2 up to rounding
        num_sub = jnp.ceil(theta * span / DT_THETA - 1e-3)
        num_sub = jnp.clip(num_sub, 1, MAX_SUBSTEPS).astype(jnp.int32)
        dt = span / num_sub.astype(dtype)
        # The four stages of every substep run through one loop body: one copy of the
        # gradient in the program (compile time) instead of four.
        c = jnp.asarray([0.0, 0.5, 0.5, 1.0], dtype)  # stage offsets
        b = jnp.asarray([1.0, 2.0, 2.0, 1.0], dtype) / 6  # stage weights

        def stage(i, state):
            w_, nu_, kw, knu, aw, anu = state
            j = i % 4
            w_s, nu_s = w_ + c[j] * dt * kw, jnp.maximum(nu_ + c[j] * dt * knu, 0)
            dw, dnu = rhs(w_s, nu_s, cw, cnu, g, i == 0)
            aw, anu = aw + b[j] * dw, anu + b[j] * dnu
            last = j == 3
            w_ = jnp.where(last, w_ + dt * aw, w_)
            nu_ = jnp.where(last, jnp.maximum(nu_ + dt * anu, 0), nu_)
            zero = 0 * aw, 0 * anu
            aw, anu = jnp.where(last, zero[0], aw), jnp.where(last, zero[1], anu)
            return w_, nu_, dw, dnu, aw, anu

        state = (w, nu, 0 * w, 0 * nu, 0 * w, 0 * nu)
        w, nu, *_ = lax.fori_loop(0, 4 * num_sub, stage, state)
        return w, nu, num_sub

    def step(carry, t):
        w, nu, Y, X = carry
        L, g = value_and_grad(w)
        theta, Y, eig_mv = eig(w, nu, Y, t == 0)
        if flow == "stable":
            w_new, nu_new, num_sub = integrate(w, nu, g, 1.0, theta[0], 0.0, 0.0)
            sigma, X_new, Y_new = jnp.zeros((), dtype), X, Y
            matvecs, res = eig_mv, jnp.zeros((), dtype)
        else:
            # cone_solves cone problems per unit time, each followed by RK4 substeps with
            # its oscillation terms frozen
            span = 1.0 / cone_solves
            X_new, cw, cnu, crit, res = oscillation(w, nu, g, theta, Y, X, span)
            sigma = 0.5 * jnp.sum(jnp.diag(X_new) * theta[:k])
            w_new, nu_new, num_sub = integrate(w, nu, g, span, theta[0], cw, cnu)
            matvecs = eig_mv + crit
            Y_new = Y
            for _ in range(cone_solves - 1):
                g_ = grad(w_new)
                th_, Y_new, more = eig(w_new, nu_new, Y_new, False)
                X_new, cw, cnu, crit, r = oscillation(w_new, nu_new, g_, th_, Y_new, X_new, span)
                w_new, nu_new, m = integrate(w_new, nu_new, g_, span, th_[0], cw, cnu)
                num_sub = num_sub + m
                matvecs = matvecs + more + crit
                res = jnp.maximum(res, r)
        grads = 4 * num_sub  # the step's first gradient serves RK4's first stage
        out = FlowTrace(
            loss=L,
            predicted=L + sigma,
            eigs=theta[:k],
            lr_eff=opt.lr_eff(nu),
            sigma=sigma,
            substeps=num_sub,
            matvecs=matvecs,
            grads=grads,
            eig_next=_next_eig(theta, k),
            cone_residual=res,
            params=None,
            nu=None,
        )
        return (w_new, nu_new, Y_new, X_new), out

    carry0 = (w0, nu0, Y0, jnp.zeros((k, k), dtype))
    (w, nu, _, _), outs = lax.scan(step, carry0, jnp.arange(steps))
    return outs._replace(params=w, nu=nu)


def _next_eig(theta: Array, k: int) -> Array:
    """The (k + 1)-th of the eigen-solve's values theta [b] (b = k + 1 unless k is the
    dimension: then NaN)."""
    return theta[k] if theta.shape[0] > k else jnp.full((), jnp.nan, theta.dtype)


def _third_derivatives(f: Callable, k: int) -> Callable:
    """(w, U [n, k], mask [k]) -> N [k, k, n], N_ij = grad_w (u_i^T H(w) u_j) = D^3 f[u_i,
    u_j, .]: the jvp along u_j of the Hessian-vector product with u_i, for the pairs of
    critical directions (mask); zero for the others. One pair at a time through one loop
    body, skipped where not needed (under vmap a skipped pair is computed and dropped)."""
    grad = jax.grad(f)
    iu, ju = (jnp.asarray(a) for a in np.triu_indices(k))

    def d3(w, u, v):
        return jax.jvp(lambda x: jax.jvp(grad, (x,), (u,))[1], (w,), (v,))[1]

    def third(w, U, mask):
        def pair(p, N):
            i, j = iu[p], ju[p]
            vec = lax.cond(
                mask[i] & mask[j], lambda: d3(w, U[:, i], U[:, j]), lambda: jnp.zeros_like(w)
            )
            return N.at[i, j].set(vec).at[j, i].set(vec)

        N = jnp.zeros((k, k, w.shape[0]), w.dtype)
        return lax.fori_loop(0, len(iu), pair, N)

    return third


def _discrete(f, opt: _Opt, steps, k, w0, nu0, Y0, eig):
    """The optimizer itself, its effective eigenvalues with the preconditioner each step
    uses."""
    dtype = w0.dtype
    value_and_grad = jax.value_and_grad(f)
    if opt.name == "gd":
        tx = optax.sgd(opt.lr)
        state0 = tx.init(w0)
    elif opt.name == "rmsprop":
        tx = optax.chain(
            optax.scale_by_rms(decay=opt.beta2, eps=opt.eps, eps_in_sqrt=False),
            optax.scale(-opt.lr),
        )
        state0 = (optax.ScaleByRmsState(nu=nu0), optax.ScaleState())
    else:
        tx, state0 = None, nu0  # scalar RMSProp: not in Optax

    def step(carry, t):
        w, state, Y = carry
        L, g = value_and_grad(w)
        if opt.name == "scalar_rmsprop":
            nu = opt.beta2 * state + (1 - opt.beta2) * jnp.vdot(g, g)
            w_new = w - _safe_div(g, opt.p(nu))
            state = nu
        else:
            updates, state = tx.update(g, state, w)
            # 0 / 0 where a coordinate's squared gradients were all exactly 0 (eps = 0)
            w_new = w + jnp.where(jnp.isfinite(updates), updates, 0)
            nu = state[0].nu if opt.name == "rmsprop" else jnp.zeros((), dtype)
        theta, Y, eig_mv = eig(w, nu, Y, t == 0)
        out = FlowTrace(
            loss=L,
            predicted=jnp.full((), jnp.nan, dtype),
            eigs=theta[:k],
            lr_eff=opt.lr_eff(nu),
            sigma=jnp.zeros((), dtype),
            substeps=jnp.ones((), jnp.int32),
            matvecs=eig_mv,
            grads=jnp.ones((), jnp.int32),
            eig_next=_next_eig(theta, k),
            cone_residual=jnp.zeros((), dtype),
            params=None,
            nu=None,
        )
        return (w_new, state, Y), out

    (w, state, _), outs = lax.scan(step, (w0, state0, Y0), jnp.arange(steps))
    if opt.name == "rmsprop":
        nu = state[0].nu
    elif opt.name == "scalar_rmsprop":
        nu = state
    else:
        nu = jnp.zeros((), dtype)
    return outs._replace(params=w, nu=nu)


def onset(eigs_TxK: Any, *, rtol: float = 1e-3) -> int | None:
    """The first step whose top effective eigenvalue reaches 2 (within rtol: the central
    flow holds it at 2 up to rounding), or None."""
    top = np.asarray(eigs_TxK)[:, 0]
    hit = np.flatnonzero(top >= 2 * (1 - rtol))
    return int(hit[0]) if len(hit) else None


def running_mean(x_T: Any, window: int) -> np.ndarray:
    """Centred running mean over `window` steps (shorter at the ends), NaN-free input."""
    x = np.asarray(x_T, np.float64)
    window = checks.integer("window", window, minimum=1)
    c = np.concatenate([[0.0], np.cumsum(x)])
    h = window // 2
    idx = np.arange(len(x))
    lo, hi = np.maximum(idx - h, 0), np.minimum(idx - h + window, len(x))
    return (c[hi] - c[lo]) / (hi - lo)
