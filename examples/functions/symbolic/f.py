# A function with a heavy pure-Python import (sympy, ~0.3 s to import):
# the zygote benchmark's subject (bench/zygote.sh). Every dependency is
# pinned in requirements.txt (the worker installs with --no-deps).
import sympy


def f(event):
    x = sympy.Symbol("x")
    expr = sympy.sympify(event.get("expr", "x**2 + 2*x + 1"))
    return {"factored": str(sympy.factor(expr)), "derivative": str(sympy.diff(expr, x))}
