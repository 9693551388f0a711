"""Reference values for reports' Student-t and Welch code, from SciPy.

Run: python3 make_student_t.py > student_t.json   (needs `pip install scipy`)
"""
import json

from scipy import stats

cdf = [[t, df, float(stats.t.cdf(t, df))] for t in (-3.0, -0.5, 0.0, 0.7, 2.0, 4.5) for df in (1, 2.5, 5, 30)]
quantile_975 = [[df, float(stats.t.ppf(0.975, df))] for df in (1, 2, 3.7, 10, 100)]

a = [3.91, 3.87, 3.95, 3.90]
b = [3.80, 3.84, 3.79]
welch = stats.ttest_ind(a, b, equal_var=False)
x = [4.10, 4.02, 4.07]
y = [4.00, 3.97, 4.01]
paired = stats.ttest_rel(x, y)

print(json.dumps({
    "cdf": cdf,
    "quantile_975": quantile_975,
    "welch": {"a": a, "b": b, "t": float(welch.statistic), "p": float(welch.pvalue), "df": float(welch.df)},
    "paired": {"x": x, "y": y, "t": float(paired.statistic), "p": float(paired.pvalue)},
}, indent=1))
