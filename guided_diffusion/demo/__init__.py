"""
The demo's own modules (``scripts/demo.py``): the built-in digits, the settings and results
table, the plots and the restoration section. No other module of the package imports them;
they alone need the ``[demo]`` extra (scikit-learn, matplotlib).
"""
