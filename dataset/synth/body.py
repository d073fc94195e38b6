"""The presenter's skeleton in body units (1 unit = head height, y down, x = 0 on the body's axis).

Garments are drawn in the same coordinates, so a garment described once fits
the body when worn (sleeves follow the arms, trouser legs follow the legs) and
lies flat when drawn with the ``flat`` pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NECK_Y = 1.3
SHOULDER_Y = 1.44
ARM_JOINT = (0.9, 1.62)
ARMPIT_Y = 2.05
WAIST_Y = 3.0
HIP_Y = 3.7
CROTCH_Y = 4.08
HIP_JOINT = (0.42, 3.85)
KNEE_Y = 5.6
ANKLE_Y = 7.35
FOOT_Y = 7.62
UPPER_ARM = 1.35
FOREARM = 1.25
BODY_HEIGHT = 7.7
"""Head top to sole, in units."""

Spine = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Pose:
    """Arm and leg centre lines (joint, elbow or knee, wrist or ankle), right side first."""

    name: str
    arms: tuple[Spine, Spine]
    legs: tuple[Spine, Spine]

    def arm(self, side: int) -> np.ndarray:
        """The arm spine of side +1 (right, x > 0) or -1 (left)."""
        return np.asarray(self.arms[0 if side > 0 else 1], np.float64)

    def leg(self, side: int) -> np.ndarray:
        return np.asarray(self.legs[0 if side > 0 else 1], np.float64)

    def leg_x(self, side: int, y: float) -> float:
        """The x of a leg's centre line at height ``y`` (extrapolated linearly beyond the ankle)."""
        leg = self.leg(side)
        return float(np.interp(y, leg[:, 1], leg[:, 0], left=leg[0, 0], right=leg[-1, 0]))


def _direction(angle_deg: float, side: int) -> np.ndarray:
    """A unit vector ``angle_deg`` away from straight down, outwards for positive angles."""
    a = np.radians(angle_deg)
    return np.array([side * np.sin(a), np.cos(a)])


def bent_arm(side: int, shoulder_deg: float, elbow_deg: float) -> Spine:
    """An arm from the shoulder joint, upper arm and forearm at the given angles from vertical."""
    joint = np.array([side * ARM_JOINT[0], ARM_JOINT[1]])
    elbow = joint + UPPER_ARM * _direction(shoulder_deg, side)
    wrist = elbow + FOREARM * _direction(elbow_deg, side)
    return tuple((float(p[0]), float(p[1])) for p in (joint, elbow, wrist))


def reaching_arm(side: int, target: tuple[float, float], foreshorten: bool = False) -> Spine:
    """An arm whose wrist reaches ``target``, the elbow bent down and outwards (two-link inverse kinematics).

    With ``foreshorten`` a target close to the shoulder is reached by an arm
    pointing towards the camera, drawn shorter, instead of an elbow sticking
    far out sideways: how arms look when holding something up to the chest.
    """
    joint = np.array([side * ARM_JOINT[0], ARM_JOINT[1]])
    goal = np.asarray(target, np.float64)
    reach = float(np.linalg.norm(goal - joint))
    upper, fore = UPPER_ARM, FOREARM
    if foreshorten:
        k = min(max(reach / (0.85 * (UPPER_ARM + FOREARM)), 0.35), 1.0)
        upper, fore = upper * k, fore * k
    d = min(max(reach, abs(upper - fore) + 1e-3), upper + fore - 1e-3)
    axis = (goal - joint) / max(reach, 1e-9)
    along = (upper ** 2 - fore ** 2 + d ** 2) / (2 * d)
    across = np.sqrt(max(upper ** 2 - along ** 2, 0.0))
    normal = np.array([-axis[1], axis[0]])
    if normal @ np.array([side * 0.5, 1.0]) < 0:
        normal = -normal
    elbow = joint + axis * along + normal * across
    wrist = joint + axis * d
    return tuple((float(p[0]), float(p[1])) for p in (joint, elbow, wrist))


def standing_legs(spread: float = 0.0) -> tuple[Spine, Spine]:
    """Legs from hip joints to ankles; ``spread`` moves the feet apart (units)."""
    legs = []
    for side in (1, -1):
        legs.append(((side * HIP_JOINT[0], HIP_JOINT[1]), (side * (0.37 + spread / 2), KNEE_Y),
                     (side * (0.31 + spread), ANKLE_Y)))
    return legs[0], legs[1]


def flat_pose(sleeve_deg: float, leg_spread: float = 0.12) -> Pose:
    """Straight arms and legs for a garment lying flat or hanging (no body inside)."""
    arms = (bent_arm(1, sleeve_deg, sleeve_deg), bent_arm(-1, sleeve_deg, sleeve_deg))
    return Pose("flat", arms, standing_legs(leg_spread))


def relaxed_pose(rng: np.random.Generator) -> Pose:
    """Arms hanging, slightly away from the body, elbows a little bent."""
    arms = []
    for side in (1, -1):
        a = float(rng.uniform(7, 16))
        arms.append(bent_arm(side, a, a - float(rng.uniform(0, 10))))
    return Pose("relaxed", (arms[0], arms[1]), standing_legs(float(rng.uniform(0.0, 0.25))))


def hip_pose(rng: np.random.Generator) -> Pose:
    """One or both hands on the hips, a common pose for showing a garment's fit."""
    arms = []
    both = rng.random() < 0.5
    for side in (1, -1):
        if side == 1 or both:
            arms.append(reaching_arm(side, (side * 0.7, 3.15)))
        else:
            a = float(rng.uniform(7, 14))
            arms.append(bent_arm(side, a, a - 4))
    return Pose("hip", (arms[0], arms[1]), standing_legs(float(rng.uniform(0.05, 0.3))))


def holding_pose(hands: tuple[tuple[float, float], tuple[float, float]], rng: np.random.Generator) -> Pose:
    """Both hands up at ``hands`` (right, left), holding a garment up in front of the body."""
    arms = (reaching_arm(1, hands[0], foreshorten=True), reaching_arm(-1, hands[1], foreshorten=True))
    return Pose("holding", arms, standing_legs(float(rng.uniform(0.0, 0.2))))
