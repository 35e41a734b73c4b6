"""The 'tfds' source: a TFDS dataset already built in `data.tfds_data_dir`, e.g. WMT14.

Build it once where the internet is reachable (`pip install tensorflow-datasets`; the WMT
builders also need TensorFlow at build time, not here):

    tfds build wmt14_translate/de-en --file_format=array_record --data_dir=DIR

then copy DIR along and set data.tfds_name='wmt14_translate/de-en', data.tfds_data_dir=DIR,
data.source_lang='en', data.target_lang='de'. The direction always comes from source_lang and
target_lang; TFDS's own "supervised keys" (de -> en for WMT) are never used.
"""

import tensorflow_datasets as tfds

from data.errors import DataError
from data.registry import Source, register


class PrebuiltTfdsSource(Source):
    name = "tfds"

    def builder(self, data_config) -> tfds.core.DatasetBuilder:
        """The builder of the prebuilt dataset, checked: built, and has both languages."""
        name, data_dir = data_config.tfds_name, data_config.tfds_data_dir or None
        build_hint = (
            f"build it where the internet is reachable with `tfds build {name} "
            f"--file_format=array_record{' --data_dir=' + data_dir if data_dir else ''}`"
        )
        try:
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(
                f"TFDS dataset '{name}' is unknown or not built in "
                f"{data_dir or 'the default TFDS data_dir'}; {build_hint}"
            ) from None
        if not builder.is_prepared():
            raise DataError(
                f"TFDS dataset '{name}' is not built in {builder.data_dir}; {build_hint}"
            )
        languages = sorted(builder.info.features.keys())
        for lang in (data_config.source_lang, data_config.target_lang):
            if lang not in languages:
                raise DataError(
                    f"TFDS dataset '{name}' has no language '{lang}' (it has "
                    f"{', '.join(languages)}); set data.source_lang / data.target_lang"
                )
        return builder


SOURCE = register(PrebuiltTfdsSource())
