"""Class-name and template lists: the shipped ones have the standard counts, user files are checked."""
import pytest

from hyperclip_jax.evaluators import classnames


@pytest.mark.parametrize("name,num_classes,num_templates", [("imagenet1k", 1000, 80), ("cifar100", 100, 18),
                                                            ("cifar10", 10, 18)])
def test_shipped_lists_have_the_standard_counts(name, num_classes, num_templates):
  names, templates = classnames.shipped(name)
  assert len(names) == num_classes and len(set(names)) == num_classes
  assert len(templates) == num_templates and len(set(templates)) == num_templates
  assert all(t.count("{}") == 1 for t in templates)
  assert all(n == n.strip() and n for n in names)


def test_shipped_lists_start_and_end_as_the_standard_ones():
  imagenet, templates = classnames.shipped("imagenet1k")
  assert imagenet[:3] == ["tench", "goldfish", "great white shark"] and imagenet[-1] == "toilet paper"
  assert templates[0] == "a bad photo of a {}." and "itap of a {}." in templates
  cifar100, _ = classnames.shipped("cifar100")
  assert cifar100[:2] == ["apple", "aquarium fish"] and cifar100[-1] == "worm"
  assert classnames.shipped("cifar10")[0][0] == "airplane"


def test_demo_task_and_class_file(tmp_path):
  names, templates = classnames.resolve("demo:shape")
  assert "circle" in names and all("{}" in t for t in templates)
  path = tmp_path / "c.txt"
  path.write_text("  Katze \nchien\n日本の猫\n\n\n", encoding="utf-8")  # trailing blank lines are fine
  assert classnames.resolve(str(path)) == (["Katze", "chien", "日本の猫"], ["a photo of a {}."])


@pytest.mark.parametrize("content,message", [
    ("cat\ndog\ncat\n", r"'cat' on line 3 repeats line 1; class names must be unique$"),
    ("cat\n\ndog\n", r"line 2 is empty; give one name per line, no blank lines$"),
    ("\n \n", r"is empty; give one name per line$"),
    (b"cat\n\xff\xfe\n", r"is not UTF-8 text"),
])
def test_bad_class_files_are_one_line_errors(tmp_path, content, message):
  path = tmp_path / "classes.txt"
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(classnames.ClassListError, match=message) as e:
    classnames.resolve(str(path))
  assert "\n" not in str(e.value)


def test_bad_templates_and_unknown_lists(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("a photo of a {}.\na photo.\n", encoding="utf-8")
  with pytest.raises(classnames.ClassListError, match=r"line 2 \('a photo.'\) must contain exactly one \{\}"):
    classnames.resolve("cifar10", str(path))
  with pytest.raises(classnames.ClassListError, match="demo task unknown; known: demo:colour"):
    classnames.resolve("demo:nope")
