"""Naive NumPy oracles, written with explicit loops and independent of gloss_core's vectorised code.

They follow method.md step by step: direct Euclidean distances (not 2 - 2 cos), no rescaling, no
leak, an explicit matrix inverse for the label propagation.
"""

from __future__ import annotations

import math

import numpy as np


def unit(e):
    e = np.asarray(e, dtype=np.float64)
    out = np.zeros_like(e)
    for i in range(len(e)):
        out[i] = e[i] / math.sqrt(sum(x * x for x in e[i]))
    return out


def transition(e, sigma):
    u = unit(e)
    n = len(u)
    W = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                W[i, j] = math.exp(-sum((u[i] - u[j]) ** 2) / (2 * sigma**2))
    D = [sum(W[i]) for i in range(n)]
    A = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            A[i, j] = W[i, j] / math.sqrt(D[i] * D[j])
    for j in range(n):
        col = sum(A[i, j] for i in range(n))
        for i in range(n):
            A[i, j] /= col
    for i in range(n):
        row = sum(A[i])
        for j in range(n):
            A[i, j] /= row
    return A


def propagate(e, labels, labeled, sigma, num_classes):
    T = transition(e, sigma)
    U = [i for i in range(len(labels)) if not labeled[i]]
    L = [i for i in range(len(labels)) if labeled[i]]
    T_uu = np.array([[T[i, j] for j in U] for i in U]).reshape(len(U), len(U))
    T_ul = np.array([[T[i, j] for j in L] for i in U]).reshape(len(U), len(L))
    Y = np.zeros((len(L), num_classes))
    for r, i in enumerate(L):
        Y[r, labels[i]] = 1.0
    return np.linalg.inv(np.eye(len(U)) - T_uu) @ T_ul @ Y


def g_loss(e, labels, labeled, sigma, num_classes, class_weights=None, formulation="paper"):
    F = propagate(e, labels, labeled, sigma, num_classes)
    y_u = [labels[i] for i in range(len(labels)) if not labeled[i]]
    w = [1.0 if class_weights is None else class_weights[y] for y in y_u]
    terms = []
    for r, y in enumerate(y_u):
        if formulation == "paper":
            terms.append(-math.log(max(F[r, y], 1e-8)))
        else:  # cross-entropy with F_U as logits
            lse = math.log(sum(math.exp(v) for v in F[r]))
            terms.append(lse - F[r, y])
    loss = sum(wi * t for wi, t in zip(w, terms)) / sum(w)
    return loss / len(y_u) if formulation == "reference" else loss


def supcon(e, labels, temperature):
    u = unit(e)
    n = len(u)
    total, anchors = 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(u[i] @ u[a] / temperature) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(u[i] @ u[p] / temperature) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors if anchors else 0.0


def batch_all_triplet(e, labels, margin):
    e = np.asarray(e, dtype=np.float64)
    n = len(e)

    def dist(a, b):
        return math.sqrt(sum((e[a] - e[b]) ** 2))

    losses = []
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for q in range(n):
                if labels[q] == labels[a]:
                    continue
                losses.append(max(dist(a, p) - dist(a, q) + margin, 0.0))
    positive = [x for x in losses if x > 1e-16]
    return sum(positive) / len(positive) if positive else 0.0


def cosine_pairs(e, labels):
    u = unit(e)
    n = len(u)
    terms = []
    for i in range(n):
        for j in range(i + 1, n):
            target = 1.0 if labels[i] == labels[j] else 0.0
            terms.append((u[i] @ u[j] - target) ** 2)
    return sum(terms) / len(terms) if terms else 0.0


def cross_entropy(logits, labels, class_weights=None):
    num, den = 0.0, 0.0
    for row, y in zip(np.asarray(logits, dtype=np.float64), labels):
        w = 1.0 if class_weights is None else class_weights[y]
        lse = math.log(sum(math.exp(v) for v in row))
        num += w * (lse - row[y])
        den += w
    return num / den


def sqrt_rule(e, include_diagonal=False):
    u = unit(e)
    n = len(u)
    d = []
    for i in range(n):
        for j in range(n):
            if include_diagonal or i < j:
                d.append(0.0 if i == j else math.sqrt(sum((u[i] - u[j]) ** 2)))
    return math.sqrt(float(np.median(d)) / 3)


def dicm(e, labels):
    u = unit(e)
    best = math.inf
    for i in range(len(u)):
        for j in range(len(u)):
            if labels[i] != labels[j]:
                best = min(best, math.sqrt(sum((u[i] - u[j]) ** 2)))
    return best / 3


def silhouettes(e, labels):
    """Macro (mean of class means) and micro silhouette on L2-normalised rows, with loops."""
    u = unit(e)
    n = len(u)
    s = []
    for i in range(n):
        same = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not same:
            s.append(0.0)  # sklearn's convention for a singleton class
            continue
        a = sum(math.sqrt(sum((u[i] - u[j]) ** 2)) for j in same) / len(same)
        b = min(
            sum(math.sqrt(sum((u[i] - u[j]) ** 2)) for j in range(n) if labels[j] == c)
            / sum(1 for j in range(n) if labels[j] == c)
            for c in set(labels) if c != labels[i]
        )
        s.append((b - a) / max(a, b))
    classes = sorted(set(labels))
    means = [np.mean([s[i] for i in range(n) if labels[i] == c]) for c in classes if labels.count(c) >= 2]
    return float(np.mean(means)), float(np.mean(s))
