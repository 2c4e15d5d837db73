"""Command `models`: the named models, bundled and user-trained."""

from __future__ import annotations

import click

from ..model.weights import available_models, read_card
from ._common import handle_errors


@click.command("models")
@handle_errors
def models_command():
    """List the named models (bundled, then user-trained)."""
    for name, path in available_models().items():
        card = read_card(path)
        config = card.get("model_config", {})
        metrics = card.get("metrics", {})
        accuracy, cosine = metrics.get("val_masked_token_accuracy"), metrics.get("val_teacher_cosine")
        extra = (f"\tmasked-token accuracy {accuracy:.3f}" if isinstance(accuracy, float) else
                 f"\tcosine to its teacher {cosine:.3f}" if isinstance(cosine, float) else "")
        shape = f"{config.get('encoder_layers')}x{config.get('encoder_width')}"
        if config.get("embedding_width"):
            shape += f"->{config['embedding_width']}"
        click.echo(f"{name}\t{shape}\t{path}{extra}")
