import pytest

from emolens.labels import CLASSES, CLASSES_7, canonical_name, class_index, remap


def test_canonical_order_is_affectnet8():
    assert CLASSES == ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
    assert CLASSES_7 == CLASSES[:7]


@pytest.mark.parametrize(
    "name,expected",
    [("Happy", "happiness"), ("angry", "anger"), ("3_Surprise", "surprise"), ("SAD", "sadness"), ("fearful", "fear")],
)
def test_aliases(name, expected):
    assert canonical_name(name) == expected


def test_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="unknown emotion class name 'bored'"):
        canonical_name("bored")


def test_remap_7_to_8_and_back():
    assert remap([0, 6, 3], CLASSES_7, CLASSES) == [0, 6, 3]
    assert class_index("contempt") == 7
    with pytest.raises(ValueError, match="contempt"):
        remap([7], CLASSES, CLASSES_7)
