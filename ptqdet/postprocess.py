"""Turn raw model outputs into detections: [N, 6] rows (class, score, x1, y1, x2, y2) + per-image counts.

Models exported with NMS inside (PicoDet) already return that. PP-YOLOE exported with
`exclude_nms=True` returns boxes [B, M, 4] (in original-image pixels) and scores [B, C, M];
ptqdet applies PaddleDetection's multi-class NMS op with PaddleDetection's parameters.
"""
from __future__ import annotations

import numpy as np

from .config import NMSSettings
from .paddle_static import dynamic_mode


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, nms: NMSSettings) -> tuple[np.ndarray, np.ndarray]:
    """PaddleDetection's MultiClassNMS (the multiclass_nms3 op) on a batch."""
    import paddle
    from ppdet.modeling import ops

    with dynamic_mode():
        out, num, _ = ops.multiclass_nms(
            paddle.to_tensor(boxes.astype(np.float32)), paddle.to_tensor(scores.astype(np.float32)),
            score_threshold=nms.score_threshold, nms_top_k=nms.nms_top_k, keep_top_k=nms.keep_top_k,
            nms_threshold=nms.nms_threshold, normalized=True, nms_eta=1.0, background_label=nms.background_label,
            return_index=False, return_rois_num=True)
        return out.numpy().reshape(-1, 6), num.numpy().astype(np.int32)


def to_detections(outputs: list[np.ndarray], nms_outside: bool, nms: NMSSettings) -> dict[str, np.ndarray]:
    """{'bbox': [N, 6], 'bbox_num': [B]} from the model's outputs."""
    if nms_outside:
        if len(outputs) < 2 or outputs[0].ndim != 3 or outputs[1].ndim != 3:
            raise ValueError("arch PPYOLOE expects a model exported with exclude_nms=True: outputs boxes [B, M, 4] "
                             f"and scores [B, C, M]; got shapes {[o.shape for o in outputs]}")
        bbox, num = multiclass_nms(outputs[0], outputs[1], nms)
        return {"bbox": bbox, "bbox_num": num}
    bbox = outputs[0]
    if bbox.ndim == 3 and bbox.shape[1:] == (1, 6):
        # TTFNet's TTFBox decode: paddle2onnx keeps the axis Paddle's gather drops ([N, 1, 6])
        bbox = bbox[:, 0]
    if bbox.ndim != 2 or bbox.shape[-1] != 6:
        raise ValueError(f"expected NMS output bbox [N, 6] and bbox_num [B]; got shapes {[o.shape for o in outputs]} "
                         "(a model exported without NMS needs arch: PPYOLOE)")
    return {"bbox": bbox, "bbox_num": outputs[1].astype(np.int32)}
