"""Labelled synthetic benchmark scenes: a room with photo-covered objects, rendered by exact ray casting.

The published open-vocabulary benchmarks cannot be downloaded here, so the project builds its own
scenes with exact ground truth. A scene is a closed room (wood floor, brick and plaster walls,
ceiling) holding axis-aligned boxes ("cubes" with the photo on their four sides, "panels" with it
on their two large faces) that stand on the floor. The photos are real, bundled with installed
packages (scikit-image, and scikit-learn for two of the benchmark preset's), and cropped to the
thing they show, so each object has a clear name.

Views are rendered by casting rays against the boxes in numpy, independently of the project's
Gaussian rasterizer: RGB (diffuse shading with a shadow-casting light, supersampled), per-pixel
instance id and z-depth at pixel centres. World: z up, floor at z = 0, metres.

Output (a standard transforms.json dataset)::

    transforms.json          OpenGL camera-to-world matrices, fl_x/fl_y/cx/cy/w/h, ply_file_path
    images/0000.png ...      RGB
    depth/0000.png           uint16 z-depth in millimetres (transforms.json: depth_unit_scale_factor)
    instances/0000.png       uint16 instance id (0 = room)
    labels/0000.json         LERF-OVS labels of the evaluation views (index % label_every == 0)
    objects.json             labels, synonyms, instance ids, 3D boxes
    points3d.ply             random surface samples with colours (3DGS initialisation)

Modules, each importing only those above it: `textures` (photos and room textures), `layout`
(config, presets, room and boxes, `build_scene`), `raycast` (intersection, shading, `render_view`),
`cameras` (look-at poses, sampled views, video path), `writer` (`make_scene`, `make_video`, point
cloud, depth and instance readers). This package re-exports their public names.
"""

from fmsplat.scene.synthetic.textures import PHOTOS, PhotoSpec
from fmsplat.scene.synthetic.layout import PRESETS, Box, Room, Scene, SceneConfig, build_scene, preset_config
from fmsplat.scene.synthetic.raycast import albedo, camera_rays, intersect, render_view, shade
from fmsplat.scene.synthetic.cameras import UP, intrinsics, look_at_camera, sample_cameras, video_path
from fmsplat.scene.synthetic.writer import (
    GENERATOR_VERSION,
    load_depth,
    load_instances,
    make_scene,
    make_video,
    sample_surface_points,
)

__all__ = [
    "GENERATOR_VERSION", "PHOTOS", "PRESETS", "UP", "Box", "PhotoSpec", "Room", "Scene", "SceneConfig", "albedo",
    "build_scene", "camera_rays", "intersect", "intrinsics", "load_depth", "load_instances", "look_at_camera",
    "make_scene", "make_video", "preset_config", "render_view", "sample_cameras", "sample_surface_points", "shade",
    "video_path",
]
