"""Where prices come from: the simulated market, first in the flow (market -> rendering ->
delivery -> web). Nothing in here imports from the rest of the app."""
