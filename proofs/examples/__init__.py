"""Example proof scripts, each runnable with ``attnverify prove proofs/examples/NAME.py``.

``softmax_temperature.py``  the Jacobian of softmax(s / T), for every n
``correlated_qk.py``        Var(q.k) when Cov(q_l, k_l) = rho, cross-checked by Monte Carlo
``wrong_step.py``           a derivation with a deliberately wrong step: what a FAIL looks like
"""
