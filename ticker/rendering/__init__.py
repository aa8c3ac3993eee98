"""From market state to bytes: HTML fragments from the templates, framed as SSE events.

Second in the flow (market -> rendering -> delivery -> web). Everything here is done once per
tick, whatever the number of viewers: the same bytes go to every one of them.
"""
