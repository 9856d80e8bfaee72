"""Find images that are the same video frame: re-encoded, resized, re-cropped, or with another on-screen overlay.

Three stages, each from a library: OpenCV's ORB keypoints of every image (cached in the data folder), candidate pairs
retrieved by a bag of visual words (scikit-learn's MiniBatchKMeans over the descriptors, tf-idf, cosine similarity),
and each candidate verified by a RANSAC homography of its ratio-tested descriptor matches. A pair whose inliers are
many (MIN_INLIERS) and spread over the picture (MIN_CELLS) is the same frame: two different frames of one video share
only their on-screen overlay (text, boxes), which matches in a small area. Pairs chain into copy groups.
Retrieval keeps the cost near-linear in the number of images: only CANDIDATES pairs per image are verified.
"""

import contextlib
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.feature_extraction.text import TfidfTransformer
from threadpoolctl import threadpool_limits

from common.errors import UserError
from common.files import NOT_WRITABLE_ERRNOS, atomic_path, file_identity, read_text_file, write_json_atomic
from common.progress import progress_bar
from dataset.images import read_rgb

FEATURE_SIDE = 512  # images are scaled to this longest side before ORB (keypoints in those pixels)
FEATURES_PER_IMAGE = 500  # ORB keypoints kept per image
FEATURES_VERSION = 2  # bump when the features above change, so cached ones are recomputed
VOCABULARY = 256  # visual words of the retrieval stage
CANDIDATES = 8  # most similar images per image that are verified
RATIO = 0.8  # Lowe's ratio test: a match counts when its best distance is under RATIO x the second best
RANSAC_PIXELS = 5.0  # a match is an inlier within this many pixels (at FEATURE_SIDE) of the fitted homography
MIN_INLIERS = 40  # a pair is the same frame with this many inliers (Kvasir-SEG: copies 109-436) ...
CELL = 32  # ... spread over MIN_CELLS squares of CELL pixels (at FEATURE_SIDE) in each image: on-screen text and
MIN_CELLS = 15  # boxes that many frames share match in 2-11 squares; Kvasir-SEG's copies cover 21-46


@dataclass(frozen=True)
class Features:
    """One image's ORB keypoints (x, y at FEATURE_SIDE) and their 32-byte descriptors."""

    points: np.ndarray  # float32 [n, 2]
    descriptors: np.ndarray  # uint8 [n, 32]


@dataclass(frozen=True)
class CopyPair:
    """Two images found to be the same frame, with the number of matches their homography explains and the
    number of CELL squares those cover (the fewer of the two images')."""

    first: str
    second: str
    inliers: int
    cells: int


def image_features(path) -> Features:
    """The ORB features of one image, scaled to FEATURE_SIDE and with its contrast equalised (so a dim image still
    gets keypoints)."""
    grey = cv2.equalizeHist(cv2.cvtColor(at_feature_side(read_rgb(path)), cv2.COLOR_RGB2GRAY))
    keypoints, descriptors = cv2.ORB_create(nfeatures=FEATURES_PER_IMAGE).detectAndCompute(grey, None)
    if descriptors is None:  # a flat image has no keypoint
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    return Features(np.array([k.pt for k in keypoints], np.float32), descriptors)


def features_key(pairs) -> str:
    """A digest of what the features of `pairs` depend on: the settings above and each image file's identity."""
    entries = [file_identity(sample_id, image) for sample_id, image, _ in pairs]
    settings = [FEATURES_VERSION, FEATURE_SIDE, FEATURES_PER_IMAGE]
    return hashlib.sha256(json.dumps([settings, entries]).encode()).hexdigest()[:20]


def all_features(pairs, cache_dir=None) -> list[Features]:
    """The features of every image of `pairs`, read from `cache_dir` when computed before for these very files,
    else computed and saved there (atomically; a cache that cannot be written is skipped, said so)."""
    path = Path(cache_dir) / f"features-{features_key(pairs)}.npz" if cache_dir else None
    cached = read_features(path, len(pairs)) if path else None
    if cached is not None:
        return cached
    features = [image_features(image) for _, image, _ in progress_bar(pairs, "image features", unit="img")]
    if path:
        save_features(path, features)
    return features


def read_features(path: Path, count: int) -> list[Features] | None:
    """The cached features in `path`, or None when it is missing, damaged or of another number of images."""
    try:
        with np.load(path) as saved:
            points, descriptors, ends = saved["points"], saved["descriptors"], saved["ends"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if len(ends) != count or (len(ends) and ends[-1] != len(points)) or len(points) != len(descriptors):
        return None
    starts = np.concatenate([[0], ends[:-1]])
    return [Features(points[s:e], descriptors[s:e]) for s, e in zip(starts, ends, strict=True)]


def save_features(path: Path, features: list[Features]) -> None:
    """Write the features as one .npz, atomically; an unwritable cache folder only costs the recomputation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as staging, open(staging, "wb") as file:
            np.savez(
                file,
                points=np.concatenate([f.points for f in features] or [np.zeros((0, 2), np.float32)]),
                descriptors=np.concatenate([f.descriptors for f in features] or [np.zeros((0, 32), np.uint8)]),
                ends=np.cumsum([len(f.points) for f in features], dtype=np.int64),
            )
    except (OSError, UserError) as error:
        if isinstance(error, OSError) and error.errno not in NOT_WRITABLE_ERRNOS:
            raise
        print(f"note: cannot cache image features in {path.parent} ({error}); they are computed each time")


def candidate_pairs(features: list[Features], candidates: int = CANDIDATES, seed: int = 0) -> set[tuple[int, int]]:
    """Index pairs (i < j) worth verifying: each image with its `candidates` most similar images by tf-idf weighted
    visual words; every pair when that is no more work (a few images)."""
    described = [index for index, f in enumerate(features) if len(f.descriptors)]
    if len(described) <= 2 * candidates + 1:
        return {(i, j) for position, i in enumerate(described) for j in described[position + 1 :]}
    bits = [np.unpackbits(features[index].descriptors, axis=1).astype(np.float32) for index in described]
    sample = np.concatenate(bits)
    sample = sample[np.random.default_rng(seed).permutation(len(sample))[: 200 * VOCABULARY]]
    with threadpool_limits(1):  # BLAS threads on these small products are slower, and far slower on a busy CPU
        words = MiniBatchKMeans(n_clusters=VOCABULARY, random_state=seed, n_init=1, batch_size=4096).fit(sample)
        histograms = np.zeros((len(described), VOCABULARY), np.float32)
        for row, image_bits in enumerate(bits):
            np.add.at(histograms[row], words.predict(image_bits), 1)
    vectors = TfidfTransformer().fit_transform(histograms)  # rows L2-normalised: dot products are cosines
    pairs = set()
    for start in range(0, len(described), 1024):
        similarity = (vectors[start : start + 1024] @ vectors.T).toarray()
        for offset, row in enumerate(similarity):
            row[start + offset] = -1
            for other in np.argsort(-row)[:candidates]:
                first, second = described[start + offset], described[int(other)]
                pairs.add((min(first, second), max(first, second)))
    return pairs


def verified_matches(a: Features, b: Features) -> list[cv2.DMatch]:
    """The ratio-tested matches between two images that one RANSAC homography explains (none when too few match)."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return []
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 4:
        return []
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)  # RANSAC draws its samples from OpenCV's generator: the same pair gives the same count
    _, inliers = cv2.findHomography(source, target, cv2.RANSAC, RANSAC_PIXELS)
    return [] if inliers is None else [match for match, keep in zip(good, inliers.ravel(), strict=True) if keep]


def match_spread(a: Features, b: Features) -> tuple[int, int]:
    """The verified matches between two images: how many, and how many CELL squares they cover in the image where
    they cover fewer."""
    matches = verified_matches(a, b)
    cells = [
        len({(int(x // CELL), int(y // CELL)) for x, y in features.points[indices]})
        for features, indices in ((a, [m.queryIdx for m in matches]), (b, [m.trainIdx for m in matches]))
    ]
    return len(matches), min(cells)


def same_frame(inliers: int, cells: int) -> bool:
    """Whether a pair's verified matches say it is one frame: many, and spread over the picture."""
    return inliers >= MIN_INLIERS and cells >= MIN_CELLS


def pair_picture(first, second) -> np.ndarray:
    """Two images side by side at FEATURE_SIDE (RGB), with a line between each pair of matched keypoints that the
    homography explains: what a person checks to confirm that two images are one frame."""
    images = [at_feature_side(read_rgb(path)) for path in (first, second)]
    features = [image_features(path) for path in (first, second)]
    keypoints = [[cv2.KeyPoint(float(x), float(y), 8) for x, y in f.points] for f in features]
    matches = verified_matches(*features)
    return cv2.drawMatches(images[0], keypoints[0], images[1], keypoints[1], matches, None, matchColor=(0, 255, 0))


def at_feature_side(image: np.ndarray) -> np.ndarray:
    """`image` scaled to a longest side of FEATURE_SIDE, as image_features sees it: the same frame at two sizes gives
    keypoints at one scale, and a small image gets keypoints at all (ORB skips 31 pixels at each border)."""
    scale = FEATURE_SIDE / max(image.shape[:2])
    shrinking = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=shrinking)


def find_copies(pairs, cache_dir=None, candidates: int = CANDIDATES) -> list[CopyPair]:
    """The pairs of images of `pairs` that are the same frame, sorted by id; with `cache_dir`, the features and the
    result are kept there for these very files and settings, so a second run finds them at once."""
    settings = [features_key(pairs), VOCABULARY, candidates, RATIO, RANSAC_PIXELS, MIN_INLIERS, CELL, MIN_CELLS]
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"copies-{digest}.json" if cache_dir else None
    saved = read_copies(path) if path else None
    if saved is not None:
        return saved
    features = all_features(pairs, cache_dir)
    ids = [sample_id for sample_id, _, _ in pairs]
    found = []
    for i, j in progress_bar(sorted(candidate_pairs(features, candidates)), "verifying pairs", unit="pair"):
        inliers, cells = match_spread(features[i], features[j])
        if same_frame(inliers, cells):
            found.append(CopyPair(*sorted((ids[i], ids[j])), inliers, cells))
    found.sort(key=lambda pair: (pair.first, pair.second))
    if path:
        with contextlib.suppress(OSError, UserError):  # an unwritable cache only costs the search next time
            write_json_atomic(path, [[pair.first, pair.second, pair.inliers, pair.cells] for pair in found])
    return found


def read_copies(path: Path) -> list[CopyPair] | None:
    """The copy pairs a previous search saved in `path`, or None when it is missing or damaged."""
    try:
        rows = json.loads(path.read_text())
        return [CopyPair(str(a), str(b), int(inliers), int(cells)) for a, b, inliers, cells in rows]
    except (OSError, ValueError, TypeError):
        return None


def copy_groups(copies: list[CopyPair]) -> list[list[str]]:
    """The groups that `copies` chain into (a copy of a copy is in the same group), each sorted, sorted."""
    parent = {}

    def root(sample_id: str) -> str:
        while parent.setdefault(sample_id, sample_id) != sample_id:
            sample_id = parent[sample_id] = parent[parent[sample_id]]
        return sample_id

    for pair in copies:
        parent[root(pair.first)] = root(pair.second)
    groups = {}
    for sample_id in parent:
        groups.setdefault(root(sample_id), []).append(sample_id)
    return sorted(sorted(group) for group in groups.values())


GROUPS_HEADER = "# copy groups: one group of ids per line (the same frame), separated by spaces"


def format_groups(groups: list[list[str]], comment: str = "") -> str:
    """The text of a copy-groups file: a header, optional comment lines, one group per line."""
    comments = [f"# {line}" for line in comment.splitlines()]
    return "\n".join([GROUPS_HEADER, *comments, *(" ".join(group) for group in groups)]) + "\n"


def read_groups(path) -> list[list[str]]:
    """The copy groups of a file (format_groups' format: '#' lines are comments), refusing an id in two groups."""
    groups, seen = [], {}
    for number, line in enumerate(read_text_file(path, "copy-groups file").splitlines(), 1):
        ids = line.split("#", 1)[0].split()
        if not ids:
            continue
        if len(ids) < 2:
            raise UserError(f"{path} line {number}: a copy group needs two or more ids, found {ids[0]!r} alone.")
        for sample_id in ids:
            if sample_id in seen:
                raise UserError(
                    f"{path} line {number}: {sample_id} is already in the group of line {seen[sample_id]}; give each"
                    " id one group (merge the two lines)."
                )
            seen[sample_id] = number
        groups.append(sorted(ids))
    return groups


def group_labels(ids: list[str], groups: list[list[str]]) -> list[int]:
    """A group number for each of `ids`: the same for the ids of one copy group, a number of its own for the rest
    (what scikit-learn's group splitters take)."""
    number = {sample_id: index for index, group in enumerate(groups) for sample_id in group}
    labels, next_label = [], len(groups)
    for sample_id in ids:
        if sample_id in number:
            labels.append(number[sample_id])
        else:
            labels.append(next_label)
            next_label += 1
    return labels
