"""What the panel's combo boxes do, without qt: filled from :class:`~.logic.Choice` lists, kept in step with the
parameter node, and the card defaults taken only when the user picks a model.

The parameter node wrapper cannot bind these combos (their items change: the zoo, the user's model folder, the
GPUs), so the Widget re-selects them from the parameter node on its ModifiedEvent with :func:`select_choice`, whose
signals are blocked, and handles the user's pick (Qt's ``activated(int)``, never ``currentIndexChanged``) with
:func:`pick_model`. That way loading a scene, or refilling the list, never changes the saved settings.

``combo`` is anything with QComboBox's ``count``, ``findData``, ``addItem``, ``setItemData``, ``clear``,
``setCurrentIndex`` and ``blockSignals``.
"""

from __future__ import annotations

from . import logic


def fill_choices(combo, choices: list[logic.Choice], tooltip_role=None) -> None:
    """Replace the combo's items by ``choices`` (title shown, value as item data), signals blocked."""
    was_blocked = combo.blockSignals(True)
    try:
        combo.clear()
        for choice in choices:
            combo.addItem(choice.title, choice.value)
            if tooltip_role is not None and choice.tooltip:
                combo.setItemData(combo.count - 1, choice.tooltip, tooltip_role)
    finally:
        combo.blockSignals(was_blocked)


def select_choice(combo, value) -> None:
    """Show ``value`` (an item's data) in the combo, signals blocked; a value it does not list yet (a model file
    loaded earlier, a saved scene's model) is added as an item of its own."""
    was_blocked = combo.blockSignals(True)
    try:
        index = combo.findData(value)
        if index < 0 and value:
            combo.addItem(str(value), value)
            index = combo.count - 1
        combo.setCurrentIndex(max(index, 0))
    finally:
        combo.blockSignals(was_blocked)


def pick_model(parameters, model: str) -> None:
    """The user picked ``model``: store it, with what its card asks for (affine pre-alignment, refinement steps) in
    ``parameters`` (the parameter node); the user may change either afterwards."""
    defaults = logic.card_defaults(model)
    parameters.model = model
    parameters.affine = defaults.affine
    parameters.refineSteps = defaults.refine_steps
