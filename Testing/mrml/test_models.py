"""Which model the segmentation panel selects: the default set by "Make default" is honoured."""

from SemiSupSegMRML.models import choose_model


def test_default_is_selected_when_just_made_default_or_nothing_valid_is_chosen():
    paths = ["/m/shipped", "/m/new", "/m/old"]
    assert choose_model(paths, "/m/old", "/m/new", prefer_default=True) == "/m/new"
    assert choose_model(paths, "/m/old", "/m/new") == "/m/old"  # the user's own choice stays
    assert choose_model(paths, "/m/gone", "/m/new") == "/m/new"
    assert choose_model(paths, "", "/m/removed") == "/m/shipped"
    assert choose_model([], "/m/old", "/m/new") == ""
