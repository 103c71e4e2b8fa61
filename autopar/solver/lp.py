"""A mixed-integer linear program held as arrays and handed to HiGHS in one call.

Variables are integers (their column index, in creation order: a stable order, so the same problem is
the same model every run); a row is a list of (variable, coefficient) pairs with bounds ``lo <= a.x <=
hi``. PuLP builds an object per variable and per term and hands HiGHS one column and one row at a time;
for the 10^5-variable problems of a 3-D mesh that was most of the solve. CBC (the fallback) still goes
through PuLP: ``Model.solve_pulp`` writes the same model there.

``sol_status`` follows PuLP's: 1 optimal, 2 feasible (a limit stopped the search), 0 no solution found,
-1 infeasible, -2 unbounded.
"""
from __future__ import annotations

import numpy as np

INF = float("inf")


class Model:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[bool] = []
        self.cost: dict[int, float] = {}
        self.const = 0.0
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []
        self.row_idx: list[list[int]] = []
        self.row_val: list[list[float]] = []
        self.value: np.ndarray | None = None
        self.sol_status = 0
        self.objective_value = 0.0
        self.gap, self.bound = 0.0, None  # HiGHS's proven relative gap and dual bound

    # ---- building ----------------------------------------------------------------------------
    def add_variable(self, low: float = 0.0, up: float | None = None, binary: bool = False) -> int:
        self.lb.append(float(low))
        self.ub.append(INF if up is None else float(up))
        self.integer.append(binary)
        return len(self.lb) - 1

    def add_variables(self, n: int, low: float = 0.0, up: float | None = None) -> list[int]:
        start = len(self.lb)
        self.lb += [float(low)] * n
        self.ub += [INF if up is None else float(up)] * n
        self.integer += [False] * n
        return list(range(start, start + n))

    def add_row(self, terms, lo: float, hi: float) -> None:
        """``lo <= sum coef * var <= hi`` (``terms``: (variable, coefficient) pairs; repeats add up)."""
        idx, val = [v for v, _ in terms], [float(c) for _, c in terms]
        if len(set(idx)) < len(idx):  # HiGHS takes one entry per (row, column): add repeats up
            merged: dict[int, float] = {}
            for v, c in zip(idx, val):
                merged[v] = merged.get(v, 0.0) + c
            idx, val = list(merged), list(merged.values())
        self.row_idx.append(idx)
        self.row_val.append(val)
        self.row_lo.append(float(lo))
        self.row_hi.append(float(hi))

    def set_objective(self, terms, const: float = 0.0) -> None:
        self.cost = {}
        for v, c in terms:
            self.cost[v] = self.cost.get(v, 0.0) + float(c)
        self.const = float(const)

    def numConstraints(self) -> int:  # noqa: N802 (PuLP's name, which callers and tests know)
        return len(self.row_lo)

    def num_variables(self) -> int:
        return len(self.lb)

    def val(self, v: int) -> float:
        return float(self.value[v]) if self.value is not None else 0.0

    # ---- solving -----------------------------------------------------------------------------
    def solve_highs(self, options: dict) -> int:
        """Solve with highspy (``options``: HiGHS option values); sets sol_status, value, gap, bound."""
        import highspy

        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        for key, value in options.items():
            h.setOptionValue(key, value)
        n = len(self.lb)
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n, len(self.row_lo)
        cost = np.zeros(n)
        if self.cost:
            cost[list(self.cost)] = list(self.cost.values())
        lp.col_cost_, lp.offset_ = cost, self.const
        lp.col_lower_, lp.col_upper_ = np.array(self.lb), np.array(self.ub)
        lp.row_lower_, lp.row_upper_ = np.array(self.row_lo), np.array(self.row_hi)
        lengths = np.fromiter((len(r) for r in self.row_idx), dtype=np.int64, count=len(self.row_idx))
        starts = np.concatenate([[0], np.cumsum(lengths)])
        index = np.fromiter((v for r in self.row_idx for v in r), dtype=np.int32, count=int(starts[-1]))
        values = np.fromiter((c for r in self.row_val for c in r), dtype=np.float64, count=int(starts[-1]))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, len(self.row_lo)
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = starts, index, values
        h.passModel(lp)
        if any(self.integer) and self._integral_relaxation(h, highspy):
            return self.sol_status
        if any(self.integer):
            cols = np.flatnonzero(self.integer).astype(np.int32)
            h.changeColsIntegrality(len(cols), cols, np.full(len(cols), highspy.HighsVarType.kInteger))
        h.run()
        status, info = h.getModelStatus(), h.getInfo()
        ms = highspy.HighsModelStatus
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        if status == ms.kOptimal:
            self.sol_status = 1
        elif status in (ms.kInfeasible, ms.kUnboundedOrInfeasible):
            self.sol_status = -1
        elif status == ms.kUnbounded:
            self.sol_status = -2
        else:
            self.sol_status = 2 if has_solution else 0
        if has_solution or self.sol_status == 1:
            self.value = np.array(h.getSolution().col_value)
            self.objective_value = float(cost @ self.value) + self.const
        bound = float(info.mip_dual_bound) if any(self.integer) else self.objective_value
        self.bound = bound if np.isfinite(bound) else None
        self.gap = float(info.mip_gap) if any(self.integer) and np.isfinite(info.mip_gap) else 0.0
        return self.sol_status

    def _integral_relaxation(self, h, highspy) -> bool:
        """Solve the LP relaxation first (dual simplex, no presolve: the fastest on these problems); when its
        optimum is integral it is the MIP's optimum (the LP bound is met), proven: sol_status 1, gap 0."""
        import time

        presolve, limit = h.getOptionValue("presolve")[1], h.getOptionValue("time_limit")[1]
        h.setOptionValue("presolve", "off")
        start = time.perf_counter()
        h.run()
        h.setOptionValue("presolve", presolve)
        h.setOptionValue("time_limit", max(limit - (time.perf_counter() - start), 1.0))
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            h.clearSolver()  # the MIP starts afresh, not from this LP's state
            return False
        value = np.array(h.getSolution().col_value)
        ints = value[np.array(self.integer)]
        if np.abs(ints - np.round(ints)).max(initial=0.0) > 1e-7:
            h.clearSolver()
            return False
        self.value, self.sol_status, self.gap = value, 1, 0.0
        self.objective_value = float(h.getInfo().objective_function_value)
        self.bound = self.objective_value
        return True

    def solve_pulp(self, backend) -> int:
        """Solve with a PuLP solver (CBC): the same model written as a PuLP problem."""
        import pulp

        prob = pulp.LpProblem(self.name, pulp.LpMinimize)
        xs = [prob.add_variable(f"v{i:07d}", lo, None if up == INF else up,
                                cat=pulp.LpBinary if b else pulp.LpContinuous)
              for i, (lo, up, b) in enumerate(zip(self.lb, self.ub, self.integer))]
        for k, (idx, val, lo, hi) in enumerate(zip(self.row_idx, self.row_val, self.row_lo, self.row_hi)):
            expr = pulp.LpAffineExpression([(xs[v], c) for v, c in zip(idx, val)])
            if lo == hi:
                prob += expr == lo, f"r{k}"
            else:
                if lo > -INF:
                    prob += expr >= lo, f"r{k}l"
                if hi < INF:
                    prob += expr <= hi, f"r{k}u"
        prob += pulp.LpAffineExpression([(xs[v], c) for v, c in self.cost.items()], constant=self.const)
        prob.solve(backend)
        self.sol_status = prob.sol_status
        if self.sol_status in (1, 2):
            self.value = np.array([x.varValue or 0.0 for x in xs])
            self.objective_value = float(pulp.value(prob.objective) or 0.0)
        self.gap, self.bound = 0.0, None
        return self.sol_status
