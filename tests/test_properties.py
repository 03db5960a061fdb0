"""Property-based tests: RetryPolicy's backoff, and run state driven through the
public client by a hypothesis state machine (on every backend)."""

import asyncio
import math
import random
import shutil
import tempfile
import time

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

import dbutil
from tinyworkflow import (RetryPolicy, RunNotFoundError, RunStateError, TinyWorkflowClient,
                          WorkflowContext, activity, workflow)

# ---- RetryPolicy.calculate_delay ---------------------------------------------------------

REL = 1e-9  # float slack: `d + d * f * u` against `d * (1 + f)`, and log-space references

delays = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
float_multipliers = st.floats(min_value=0, max_value=100, allow_nan=False)
factors = st.floats(min_value=0, max_value=1, allow_nan=False)
moderate_attempts = st.integers(min_value=-10, max_value=2000)
huge_attempts = st.integers(min_value=10**6, max_value=2**63)


@st.composite
def policies(draw, jitter=st.booleans(), initial_delay=delays,
             multiplier=st.one_of(float_multipliers, st.integers(min_value=0, max_value=10))):
    return RetryPolicy(max_retries=draw(st.integers(min_value=0, max_value=100)),
                       initial_delay=draw(initial_delay), max_delay=draw(delays),
                       backoff_multiplier=draw(multiplier), jitter=draw(jitter),
                       jitter_factor=draw(factors))


# Any attempt for a float multiplier; an int multiplier makes `multiplier ** attempt` an
# exact big integer whose cost grows with the attempt, so it gets moderate attempts only.
policy_and_attempt = st.one_of(
    st.tuples(policies(multiplier=float_multipliers), st.one_of(moderate_attempts,
                                                                huge_attempts)),
    st.tuples(policies(multiplier=st.integers(min_value=0, max_value=10)), moderate_attempts),
)


# hypothesis reseeds the global `random` for every example, which would give the jitter
# one and the same draw each time; a seed drawn by hypothesis lets it explore the jitter.
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def delay_with_seed(policy: RetryPolicy, attempt: int, seed: int) -> float:
    random.seed(seed)
    return policy.calculate_delay(attempt)


def reference(policy: RetryPolicy, attempt: int) -> float:
    """min(initial_delay * multiplier ** attempt, max_delay), in log space: never overflows."""
    i, m, cap, n = policy.initial_delay, policy.backoff_multiplier, policy.max_delay, attempt
    n = max(n, 0)
    if n == 0:
        return min(i, cap)
    if i == 0 or m == 0 or cap == 0:
        return 0.0
    log_delay = math.log(i) + n * math.log(m)
    return cap if log_delay >= math.log(cap) else math.exp(log_delay)


# Subnormal delays (below ~2.2e-308) have too few bits for a relative tolerance: with
# base = 2e-315, base * jitter is rounded by more than REL. An absolute slack far below
# any delay that matters covers them.
TINY = 1e-300


def jitter_bounds(policy: RetryPolicy, base: float) -> tuple:
    f = policy.jitter_factor if policy.jitter else 0.0
    return base * (1 - f) * (1 - REL) - TINY, base * (1 + f) * (1 + REL) + TINY


@given(policy_and_attempt, seeds)
def test_delay_is_between_zero_and_max_delay_plus_jitter(case, seed):
    policy, attempt = case
    delay = delay_with_seed(policy, attempt, seed)  # never OverflowError, even for huge attempts
    assert 0 <= delay <= policy.max_delay * (1 + policy.jitter_factor) * (1 + REL)


@given(policies(jitter=st.just(False),
                multiplier=st.one_of(st.floats(min_value=1, max_value=100),
                                     st.integers(min_value=1, max_value=10))),
       st.integers(min_value=-5, max_value=2000), st.integers(min_value=-5, max_value=2000))
def test_without_jitter_delay_never_decreases_and_never_exceeds_max(policy, a, b):
    low, high = sorted((a, b))
    assert policy.calculate_delay(low) <= policy.calculate_delay(high) <= policy.max_delay


@given(policies(jitter=st.just(False)), st.integers(min_value=0, max_value=30))
def test_without_jitter_delay_is_the_capped_exponential(policy, attempt):
    expected = min(policy.initial_delay * policy.backoff_multiplier ** attempt, policy.max_delay)
    assert policy.calculate_delay(attempt) == expected


@given(policies(jitter=st.just(True)), st.integers(min_value=0, max_value=30), seeds)
def test_jitter_moves_the_delay_by_at_most_its_factor(policy, attempt, seed):
    base = min(policy.initial_delay * policy.backoff_multiplier ** attempt, policy.max_delay)
    low, high = jitter_bounds(policy, base)
    assert low <= delay_with_seed(policy, attempt, seed) <= high


@given(policy_and_attempt, seeds)
@example((RetryPolicy(initial_delay=5e-324, max_delay=1e6, backoff_multiplier=0.5,
                      jitter=False), 1), 445718)  # subnormal: 5e-324 * 0.5 rounds to 0
def test_delay_follows_the_formula_for_every_attempt(case, seed):
    """Also past the point where multiplier ** attempt overflows a float."""
    policy, attempt = case
    assume(policy.initial_delay > 0)  # zero: test_zero_initial_delay_stays_zero
    low, high = jitter_bounds(policy, reference(policy, attempt))
    assert low <= delay_with_seed(policy, attempt, seed) <= high


@given(policies(initial_delay=st.just(0.0), multiplier=float_multipliers),
       st.one_of(moderate_attempts, huge_attempts), seeds)
def test_zero_initial_delay_stays_zero(policy, attempt, seed):
    """initial_delay=0 means "retry at once": 0 * multiplier ** n is 0 for every n."""
    assert delay_with_seed(policy, attempt, seed) == 0.0


@given(st.floats(min_value=1e-3, max_value=1e6), st.floats(min_value=1.5, max_value=10),
       st.booleans(), factors, huge_attempts, seeds)
def test_uncapped_policy_keeps_its_delay_infinite(initial, multiplier, jitter, factor, attempt,
                                                  seed):
    """max_delay=inf passes validation, so it must mean "no cap", never "no delay"."""
    try:
        policy = RetryPolicy(initial_delay=initial, max_delay=math.inf,
                             backoff_multiplier=multiplier, jitter=jitter, jitter_factor=factor)
    except ValueError:
        return  # rejecting non-finite delays is a fine answer too
    assert delay_with_seed(policy, attempt, seed) == math.inf


invalid_policies = st.one_of(
    st.builds(RetryPolicy, max_retries=st.integers(max_value=-1)),
    st.builds(RetryPolicy, initial_delay=st.floats(max_value=-1e-300, allow_infinity=True)),
    st.builds(RetryPolicy, max_delay=st.floats(max_value=-1e-300, allow_infinity=True)),
    st.builds(RetryPolicy, backoff_multiplier=st.floats(max_value=-1e-300)),
    st.builds(RetryPolicy, jitter_factor=st.floats(min_value=1, exclude_min=True)),
    st.builds(RetryPolicy, jitter_factor=st.floats(max_value=-1e-300)),
)


@given(st.data())
def test_invalid_policies_raise_value_error(data):
    with pytest.raises(ValueError):
        data.draw(invalid_policies)


@pytest.mark.parametrize("field", ["initial_delay", "max_delay", "backoff_multiplier",
                                   "jitter_factor"])
def test_nan_is_rejected(field):
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: float("nan")})


@pytest.mark.parametrize("value", [1.5, "3", None])
def test_max_retries_must_be_a_whole_number(value):
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=value)


# ---- run state machine -------------------------------------------------------------------

# Behaviour of a run, chosen by its input:
#   ok         every step succeeds
#   fail       step 2 always fails; the workflow's retries run out and the run fails
#   flaky_run  step 2 fails in the run's first attempt only; a workflow retry completes it
#   flaky_step step 2 fails once and the activity's own retry completes it, same attempt
MODES = ("ok", "fail", "flaky_run", "flaky_step")
WF_RETRIES = 2
WF_POLICY = RetryPolicy(max_retries=WF_RETRIES, initial_delay=0.001, max_delay=0.002,
                        jitter=False)
MAX_WF_DELAY = 0.002
CALLS: dict = {}  # (run_id, activity) -> executions, across every example of this file


def _count(run_id: str, name: str) -> int:
    CALLS[run_id, name] = CALLS.get((run_id, name), 0) + 1
    return CALLS[run_id, name]


@activity(name="prop_sm_prepare", retry_policy=RetryPolicy(max_retries=0))
async def sm_prepare(run_id: str, x: int) -> int:
    _count(run_id, "prepare")
    return x + 1


@activity(name="prop_sm_work", retry_policy=RetryPolicy(max_retries=0))
async def sm_work(run_id: str, mode: str, value: int) -> int:
    n = _count(run_id, "work")
    if mode == "fail" or (mode == "flaky_run" and n == 1):
        raise RuntimeError(f"{mode} call {n}")
    return value * 2


@activity(name="prop_sm_work_retried",
          retry_policy=RetryPolicy(max_retries=1, initial_delay=0.001, jitter=False))
async def sm_work_retried(run_id: str, value: int) -> int:
    if _count(run_id, "work") == 1:
        raise RuntimeError("flaky_step first call")
    return value * 2


@workflow(name="prop_sm_workflow", retry_policy=WF_POLICY)
async def sm_workflow(ctx: WorkflowContext):
    mode, x = ctx.get_input("mode"), ctx.get_input("x")
    value = await ctx.execute_activity(sm_prepare, ctx.run_id, x)
    work = sm_work_retried if mode == "flaky_step" else sm_work
    args = (ctx.run_id, value) if mode == "flaky_step" else (ctx.run_id, mode, value)
    return [mode, await ctx.execute_activity(work, *args)]


def expected_result(mode: str, x: int) -> list:
    return [mode, (x + 1) * 2]


class _Model:
    """What the machine expects of one run."""

    def __init__(self, mode: str, x: int):
        self.mode, self.x = mode, x
        self.status = "pending"
        self.attempts = 0  # claims so far
        self.events = ["workflow_created"]
        self.terminal_snapshot = None

    def claimed(self) -> None:
        """One attempt executed by recover_workflows: its outcome and its events."""
        self.attempts += 1
        self.events.append("workflow_started")
        if self.mode == "fail" and self.attempts <= WF_RETRIES:
            outcome = "retrying"
        elif self.mode == "fail":
            outcome = "failed"
        elif self.mode == "flaky_run" and self.attempts == 1:
            outcome = "retrying"
        else:
            outcome = "completed"
        self.status = outcome
        self.events.append({"retrying": "workflow_retrying", "failed": "workflow_failed",
                            "completed": "workflow_completed"}[outcome])

    def cancelled(self) -> None:
        self.status = "cancelled"
        self.events.append("workflow_cancelled")


class RunStateMachine(RuleBasedStateMachine):
    """Every example starts on an empty database: a new SQLite file, or the server test
    database emptied (``server_url``, set by the test for PostgreSQL and MySQL)."""

    runs = Bundle("runs")
    server_url = None

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="tw-props-")
        if self.server_url is None:
            url = f"sqlite+aiosqlite:///{self.dir}/runs.db"
        else:
            url = self.server_url
            self.run(dbutil.empty(url))
        self.client = TinyWorkflowClient(url, lease_seconds=30)
        self.run(self.client.initialize())
        self.model: dict[str, _Model] = {}

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self):
        try:
            self.run(self.client.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules
    @rule(target=runs, mode=st.sampled_from(MODES), x=st.integers(-1000, 1000))
    def start(self, mode, x):
        run_id = self.run(self.client.start_workflow("prop_sm_workflow",
                                                     {"mode": mode, "x": x}, wait=False))
        assert run_id not in self.model
        self.model[run_id] = _Model(mode, x)
        return run_id

    def _recover(self):
        before = {r: self.run(self.client.get_workflow_status(r)) for r in self.model}
        now = time.time()
        recovered = self.run(self.client.recover_workflows())
        assert len(recovered) == len(set(recovered)), recovered
        for run_id in recovered:
            assert run_id in self.model, f"recovered an unknown run {run_id}"
            model = self.model[run_id]
            assert model.status in ("pending", "retrying"), (
                f"recovered run {run_id} the model has as {model.status}")
            model.claimed()
        for run_id, model in self.model.items():
            if run_id in recovered:
                continue
            row = before[run_id]
            due = row.status == "pending" or (
                row.status == "retrying" and row.wake_at.timestamp() <= now)
            assert not due, f"run {run_id} was due ({row.status}) but not recovered"
        return recovered

    @rule()
    def recover(self):
        self._recover()

    @precondition(lambda self: any(m.status == "retrying" for m in self.model.values()))
    @rule()
    def advance_time_and_recover(self):
        waiting = [r for r, m in self.model.items() if m.status == "retrying"]
        time.sleep(MAX_WF_DELAY * 1.5)
        recovered = self._recover()
        assert set(waiting) <= set(recovered), "retries whose backoff passed were not run"

    @rule(run_id=runs)
    def cancel(self, run_id):
        model = self.model[run_id]
        if model.status in ("completed", "failed", "cancelled"):
            try:
                self.run(self.client.cancel_workflow(run_id))
            except RunStateError as exc:
                assert exc.status == model.status
            else:
                raise AssertionError("cancelling a finished run must raise RunStateError")
        else:
            assert self.run(self.client.cancel_workflow(run_id)) is True
            model.cancelled()

    @rule()
    def cancel_unknown_run(self):
        try:
            self.run(self.client.cancel_workflow("no-such-run"))
        except RunNotFoundError:
            pass
        else:
            raise AssertionError("cancelling an unknown run must raise RunNotFoundError")

    # -- invariants
    @invariant()
    def runs_match_the_model(self):
        listed = self.run(self.client.list_workflow_executions(workflow_name="prop_sm_workflow",
                                                               limit=1000))
        assert {r.run_id for r in listed} == set(self.model)
        for run_id, model in self.model.items():
            run = self.run(self.client.get_workflow_status(run_id))
            assert run.status == model.status, (run_id, model.mode, run.status, run.error)
            assert run.retry_count == model.events.count("workflow_retrying")
            snapshot = (run.status, run.output_data, run.error, run.completed_at)
            if model.terminal_snapshot is not None:
                assert snapshot == model.terminal_snapshot, f"finished run {run_id} changed"
            elif model.status in ("completed", "failed", "cancelled"):
                model.terminal_snapshot = snapshot
            if model.status == "completed":
                assert run.output_data == {"result": expected_result(model.mode, model.x)}
                assert run.error is None
            elif model.status == "failed":
                assert run.output_data is None
                assert run.error == f"RuntimeError: fail call {WF_RETRIES + 1}"
            elif model.status != "cancelled":
                assert run.output_data is None and run.completed_at is None

    @invariant()
    def every_transition_has_its_event(self):
        for run_id, model in self.model.items():
            events = self.run(self.client.get_workflow_events(run_id, limit=1000))
            kinds = [e.event_type for e in events if e.event_type.startswith("workflow_")]
            assert kinds == model.events, (run_id, model.mode)
            ids = [e.id for e in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)

    @invariant()
    def steps_are_recorded_once_and_completed_steps_never_rerun(self):
        for run_id, model in self.model.items():
            steps = self.run(self.client.get_workflow_steps(run_id))
            numbers = [s.step for s in steps]
            assert numbers == sorted(set(numbers)), numbers
            assert set(numbers) <= {1, 2}
            if model.attempts == 0:
                assert steps == [] and CALLS.get((run_id, "prepare")) is None
                continue
            # Step 1 succeeds in the first attempt and is replayed, never re-run.
            assert steps[0].name == "prop_sm_prepare" and steps[0].status == "completed"
            assert steps[0].output == model.x + 1
            assert CALLS[run_id, "prepare"] == 1
            work = steps[1]
            if model.mode == "flaky_step":
                assert (work.name, work.status, work.attempts) == (
                    "prop_sm_work_retried", "completed", 2)
            else:
                assert work.name == "prop_sm_work"
                assert CALLS[run_id, "work"] == model.attempts  # one call per attempt
                assert work.status == ("completed" if model.status == "completed"
                                       else "failed")


# The same number of examples on every backend. On a server every example empties the
# database and creates the schema again, and every step's invariants read each run back:
# 25 examples take some 5-6 s against a local PostgreSQL or MariaDB (SQLite: under 2 s).
# Lower the server entries here if a remote or slower server makes that too long.
MAX_EXAMPLES = {"sqlite": 25, "postgres": 25, "mysql": 25}


def test_run_state_machine(backend, db_url):
    class Machine(RunStateMachine):
        server_url = None if backend == "sqlite" else db_url

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=MAX_EXAMPLES[backend], stateful_step_count=15, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
