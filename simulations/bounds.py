"""Lower bounds on the time until every node has the image.

Fluid bound (Kumar & Ross): the origin must send every byte once, the slowest downloader must
receive every byte, and all uploads together must deliver N copies:
    T >= max(F/u_s, F/d_min, N*F / (u_s + sum(u_i))).
Chunked bound (Mundinger et al.; Ezovski, Tang & Andrew): with the file cut into M pieces and the
origin and peers all uploading at u, a piece can at best double its copies per piece time, so
    T >= (F/u) * (1 + floor(log2 N) / M).
It is exact for equal links; with unequal ones it is evaluated at u = min(u_s, mean peer upload),
which makes it a yardstick rather than a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def fluid_bound(size: float, nodes: int, origin_upload: float, uploads: Sequence[float],
                min_download: float) -> float:
    if nodes <= 0:
        return 0.0
    return max(size / origin_upload, size / min_download, nodes * size / (origin_upload + sum(uploads)))


def chunked_bound(size: float, nodes: int, upload: float, pieces: int) -> float:
    if nodes <= 0:
        return 0.0
    return size / upload * (1 + math.floor(math.log2(nodes)) / pieces)
