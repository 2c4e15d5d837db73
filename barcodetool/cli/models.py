"""Command `models`: the named models, bundled and user-trained."""

from __future__ import annotations

import click

from ..errors import ModelError
from ..model.weights import available_models, default_model_name, read_card
from ._common import handle_errors, one_line


def default_roles() -> dict[str, str]:
    """model name -> what `--model auto` picks it for, in words."""
    cpu, embed, gpu = default_model_name("cpu"), default_model_name("cpu", "embed"), default_model_name("cuda")
    roles: dict[str, list[str]] = {}
    roles.setdefault(cpu, []).append("the default on a CPU")
    if embed != cpu:
        roles.setdefault(embed, []).append("the default of embed on a CPU")
    roles.setdefault(gpu, []).append("the default on a GPU")
    return {name: ", ".join(words) for name, words in roles.items()}


@click.command("models")
@handle_errors
def models_command():
    """List the named models (bundled, then user-trained): name, shape (layers x width, -> embedding width), folder,
    a figure from the model card where it has one, and what `--model auto` picks it for."""
    roles = default_roles()
    for name, path in available_models().items():
        try:
            card = read_card(path)
        except ModelError as error:   # one damaged folder hides none of the others
            click.echo(f"{name}	(unreadable: {one_line(error)})	{path}")
            continue
        config = card.get("model_config", {})
        metrics = card.get("metrics", {})
        accuracy, cosine = metrics.get("val_masked_token_accuracy"), metrics.get("val_teacher_cosine")
        extra = (f"\tmasked-token accuracy {accuracy:.3f}" if isinstance(accuracy, float) else
                 f"\tcosine to its teacher {cosine:.3f}" if isinstance(cosine, float) else "")
        shape = f"{config.get('encoder_layers')}x{config.get('encoder_width')}"
        if config.get("embedding_width"):
            shape += f"->{config['embedding_width']}"
        click.echo(f"{name}\t{shape}\t{path}{extra}" + (f"\t({roles[name]})" if name in roles else ""))
