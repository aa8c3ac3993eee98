"""Getting the bytes to the viewers: the bus between processes, the broker's fan-out in
frames, and one :class:`~ticker.delivery.connection.Connection` per viewer.

Third in the flow (market -> rendering -> delivery -> web). It deals in topics and encoded
events only: what a quote means is the market's business, what it looks like rendering's.
"""
