"""``save_pretrained`` and ``save_to_preset`` as model methods.

A mixin of ``MiTBackbone``, ``SegFormer`` and ``MiTClassifier``; the
writers themselves live in ``keras_segformer.convert`` (imported when
called, so the models do not import the converters).
"""


class HubIO:
    """Write the model in the formats of transformers and keras-hub."""

    # Set by ``from_pretrained`` from a folder's ``preprocessor_config.json``
    # (or a keras-hub preset's image converter): the transformers
    # ``SegformerImageProcessor`` settings the weights were trained with.
    preprocessor_config = None

    def save_pretrained(self, directory, image_size=None):
        """Write a transformers checkpoint folder.

        ``config.json``, ``model.safetensors``, ``preprocessor_config.json``
        (the normalization and size the model expects) and a model card
        ``README.md``, each written under a temporary name and renamed.
        ``transformers.pipeline("image-segmentation", model=directory)``
        and ``keras_segformer.from_pretrained(directory)`` load it.

        Args:
            directory: str. Created if needed.
            image_size: int, pair ``(height, width)`` or None. The
                processor's resize target; default the loaded
                ``preprocessor_config``'s, else the model's fixed input
                size, else 512x512.

        Returns:
            dict of the paths written (``config``, ``weights``,
            ``preprocessor``, ``readme``).

        Raises:
            CheckpointError: a model transformers cannot hold
                (``head="mmseg"``).

        Example:
        >>> model.save_pretrained("out/hf")
        >>> seg = transformers.pipeline("image-segmentation", model="out/hf")
        """
        from keras_segformer.convert.to_hf import save_pretrained

        return save_pretrained(self, directory, image_size=image_size)

    def save_to_preset(self, directory, image_size=None):
        """Write a keras-hub preset folder (SegFormer or MiT backbone).

        ``keras_hub.models.SegFormerImageSegmenter.from_preset(directory)``
        (or ``MiTBackbone.from_preset`` for a backbone) loads it offline;
        keras-hub is not needed to write it. keras-hub's MiT computes the
        tanh GELU and LayerNorm epsilon 1e-6 in its blocks: a model with
        other numerics is written anyway, with a one-line warning giving
        the size of the difference.

        Args:
            directory: str. Created if needed.
            image_size: int or None. The preset's square input size
                (keras-hub models take one square size); default the
                model's fixed input size, else the ``preprocessor_config``
                size, else 512.

        Returns:
            dict of the paths written.

        Example:
        >>> model.save_to_preset("out/preset")
        >>> keras_hub.models.SegFormerImageSegmenter.from_preset("out/preset")
        """
        from keras_segformer.convert.to_keras_hub import save_to_preset

        return save_to_preset(self, directory, image_size=image_size)
