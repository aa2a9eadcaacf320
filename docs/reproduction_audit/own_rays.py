"""Own straight-ray kernel: exact segment lengths of straight rays in a 0.1 m grid (129 x 65),
written from the paper's description (Sec. 2.5: 'a row contains the length of the raypath in each cell').
A segment lying on a horizontal cell boundary goes to the row above (the convention to test)."""
import numpy as np

def ray_matrix(sx=0.01, rx=6.49, nrow=129, ncol=65, h=0.1):
    depths = 0.5 * np.arange(1, 26)
    A = np.zeros((625, nrow * ncol))
    xb = np.arange(ncol + 1) * h
    zb = np.arange(nrow + 1) * h
    k = 0
    for zs in depths:            # source-major
        for zr in depths:
            p0 = np.array([sx, zs]); p1 = np.array([rx, zr]); d = p1 - p0
            L = np.hypot(*d)
            ts = [0.0, 1.0]
            ts += [((x - sx) / d[0]) for x in xb if 0 < (x - sx) / d[0] < 1]
            if d[1] != 0:
                ts += [((z - zs) / d[1]) for z in zb if 0 < (z - zs) / d[1] < 1]
            ts = np.unique(np.array(ts))
            for a, b in zip(ts[:-1], ts[1:]):
                if b - a < 1e-12:
                    continue
                m = p0 + 0.5 * (a + b) * d
                col = min(max(int(np.floor(m[0] / h + 1e-9)), 0), ncol - 1)
                zz = m[1] / h
                if d[1] == 0 and abs(zz - round(zz)) < 1e-9:
                    row = int(round(zz)) - 1      # on a boundary: the row above
                else:
                    row = int(np.floor(zz))
                row = min(max(row, 0), nrow - 1)
                A[k, row * ncol + col] += (b - a) * L
            k += 1
    return A
