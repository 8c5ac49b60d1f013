"""Row groups to batches: ``stream()``, ``iter_batches()``, and what they read in which order.

The spine, top-down: ``streams`` -> ``single`` -> ``producer`` -> ``epoch`` (by ``order``'s deals) ->
``files`` (or ``cached`` on ``cache/``) -> ``reader``.
May import ``fetch``, ``sources`` and the core; never ``serve``, ``text``, ``loader``, ``cli`` nor torch.
"""
