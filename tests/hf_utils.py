"""Reference checkpoints made with transformers inside the tests.

No machine here reaches the Hugging Face Hub: every reference model is a
random-init transformers model, perturbed so that no weight keeps its
initial (often trivial: LayerNorm 1/0, BN 0/1) value, saved with
``save_pretrained``.
"""

import numpy as np
import torch
from transformers import (
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerModel,
)

HF_CLASSES = {
    "segmentation": SegformerForSemanticSegmentation,
    "classification": SegformerForImageClassification,
    "backbone": SegformerModel,
}

# transformers config kwargs
HF_TINY = {
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [8, 16, 24, 32],
    "num_attention_heads": [1, 2, 3, 4],
    "decoder_hidden_size": 16,
}
HF_B0 = {}  # SegformerConfig defaults are B0
HF_B2_SHAPED = {  # B2 widths, heads and decoder; depth cut for speed
    "depths": [1, 1, 2, 1],
    "hidden_sizes": [64, 128, 320, 512],
    "num_attention_heads": [1, 2, 5, 8],
    "decoder_hidden_size": 768,
}


def make_hf_model(task="segmentation", num_labels=7, seed=0, **config_kwargs):
    """Random transformers SegFormer in eval mode with non-trivial weights."""
    torch.manual_seed(seed)
    config = SegformerConfig(num_labels=num_labels, **config_kwargs)
    model = HF_CLASSES[task](config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model


def save_hf_model(directory, **kwargs):
    model = make_hf_model(**kwargs)
    model.save_pretrained(directory)
    return model


def hf_forward(model, images_nhwc):
    """Run a transformers model on NHWC numpy images; return NHWC numpy
    logits (segmentation) or (batch, classes) logits, and the stage maps."""
    pixel_values = torch.from_numpy(
        np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    )
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
    stages = [h.numpy().transpose(0, 2, 3, 1) for h in out.hidden_states]
    if hasattr(out, "logits"):
        logits = out.logits.numpy()
        if logits.ndim == 4:
            logits = logits.transpose(0, 2, 3, 1)
    else:
        logits = None
    return logits, stages
