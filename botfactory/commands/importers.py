"""`botfactory import bio|csv|rasa|conll ...` (data set -> bot folder).

The bot-definition library is imported when a command runs, so `botfactory --help` stays fast.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.botdef import EntityDef, Example
    from services.botdef.importers import IntentNames

SPLIT_NAMES = frozenset({"train", "training", "valid", "validation", "dev", "test", "nlu", "data"})
MIN_EXAMPLES = 2
EXIT_BAD_INPUT = 2

Imported = tuple[list["Example"], list["EntityDef"]]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `import` command."""
    _register_import(subparsers)


def _register_import(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("import", help="turn an NLU data set into a bot folder")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    bio = formats.add_parser("bio", help="SNIPS/ATIS-style folder: seq.in, seq.out, label")
    bio.add_argument("source", metavar="DIR", type=Path, help="data set folder or split folder")
    bio.add_argument(
        "--split", help="sub-folder to read (default: train/ when DIR has one, else DIR)"
    )
    csv = formats.add_parser("csv", help="CSV with a header: text, and intent|category|label")
    csv.add_argument("source", metavar="FILE", type=Path, help="the CSV file")
    rasa = formats.add_parser("rasa", help="Rasa 3 NLU training data (YAML)")
    rasa.add_argument("source", metavar="FILE.yml", type=Path, help="the Rasa NLU file")
    conll = _register_conll(formats)
    for sub in (bio, csv, rasa, conll):
        _add_output_options(sub)
        sub.set_defaults(func=run_import)


def _register_conll(
    formats: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    conll = formats.add_parser(
        "conll", help="token-per-line file (BIO/BIOES tags, CAIS) and an intent file"
    )
    conll.add_argument("source", metavar="FILE", type=Path, help="'token tag' lines")
    conll.add_argument(
        "--intents", required=True, type=Path, metavar="FILE", help="one intent per utterance"
    )
    conll.add_argument(
        "--language",
        type=_language_code,
        metavar="LANG",
        help="bot.yml's language (default: zh when most letters are CJK, else en)",
    )
    return conll


def _language_code(value: str) -> str:
    """A `language:` code as bot.yml's schema allows it (refused here, not by `validate`)."""
    from services.botdef.schema import LANGUAGE_PATTERN

    if not re.fullmatch(LANGUAGE_PATTERN, value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a language code (e.g. en, zh, pt-BR)")
    return value


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="BOT_DIR", help="bot folder")
    parser.add_argument("--name", help="bot name (default: derived from the input's name)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty BOT_DIR (overwrites bot.yml, data/intents.yml, "
        "data/entities.yml)",
    )


def run_import(args: argparse.Namespace) -> int:
    """Read the data set, write the bot folder, print a one-line summary."""
    from services.botdef import NluSettings, write_bot

    try:
        examples, entities = _read_source(args)
        examples = _drop_rare_intents(examples)
        name = args.name or _default_name(args)
        language = _language(args, examples)
        _check_out_dir(args.out, force=args.force)
        write_bot(
            args.out,
            name,
            examples,
            description=f"Imported from {args.source} ({args.format}).",
            entities=entities,
            nlu=NluSettings(language=language),
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    said = f", language {language}" if args.format == "conll" else ""
    print(f"wrote {args.out}: bot {name!r}, {_summary(examples, entities)}{said}")
    return 0


def _default_name(args: argparse.Namespace) -> str:
    """`derive_name` of the input; a CoNLL file inside a split folder (CAIS's
    `cais/train/ch.train`) is named after the data set, the split folder's parent."""
    source: Path = args.source
    if args.format == "conll" and source.resolve().parent.name.lower() in SPLIT_NAMES:
        return derive_name(source.resolve().parent)
    return derive_name(source)


def _language(args: argparse.Namespace, examples: Sequence[Example]) -> str:
    """`--language`, else guessed from the texts (conll); the other formats keep `en`."""
    from services.botdef.importers import guess_language

    if args.format != "conll":
        return "en"
    given: str | None = args.language
    return given or guess_language(example.text for example in examples)


def _read_source(args: argparse.Namespace) -> Imported:
    """The data set's examples and entities; renamed labels are reported on stderr."""
    from services.botdef import import_bio, import_csv, import_rasa
    from services.botdef.importers import IntentNames

    names = IntentNames()
    if args.format == "bio":
        found: Imported = (import_bio(bio_folder(args.source, args.split), names), [])
    elif args.format == "csv":
        found = (import_csv(args.source, names), [])
    elif args.format == "conll":
        found = (_read_conll(args, names), [])
    else:
        found = import_rasa(args.source, names)
    for label, name in names.renamed.items():
        print(f"warning: renamed intent {label!r} -> {name!r} (not a valid intent name)",
              file=sys.stderr)
    return found


def _read_conll(args: argparse.Namespace, names: IntentNames) -> list[Example]:
    """The CoNLL file's examples; I-/E- tags that continue no span are reported on stderr."""
    from services.botdef import import_conll
    from services.botdef.importers import TagWarnings

    warnings = TagWarnings()
    examples = import_conll(args.source, args.intents, names, warnings)
    if warnings.count:
        print(
            f"warning: {warnings.count} I-/E- tag(s) continue no span, each opened one "
            f"(first at {warnings.first})",
            file=sys.stderr,
        )
    return examples


def bio_folder(source: Path, split: str | None) -> Path:
    """DIR/SPLIT when a split is given; else DIR/train when it exists; else DIR."""
    if split is not None:
        folder = source / split
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such split folder")
        return folder
    train = source / "train"
    return train if train.is_dir() else source


def _drop_rare_intents(examples: Sequence[Example]) -> list[Example]:
    counts = Counter(example.intent for example in examples)
    rare = {intent: n for intent, n in counts.items() if n < MIN_EXAMPLES}
    if rare:
        listed = ", ".join(f"{intent} ({n})" for intent, n in sorted(rare.items()))
        print(
            f"warning: skipped intents with fewer than {MIN_EXAMPLES} examples: {listed}",
            file=sys.stderr,
        )
    return [example for example in examples if example.intent not in rare]


def derive_name(source: Path) -> str:
    """A bot name from the input path: its stem, or its parent's name for a split name."""
    path = source.resolve()
    stem = path.stem if path.suffix else path.name
    if stem.lower() in SPLIT_NAMES and path.parent.name:
        stem = path.parent.name
    slug = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")
    return slug or "bot"


def _check_out_dir(out: Path, *, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty (use --force to overwrite the bot files)")


def _summary(examples: Sequence[Example], entities: Sequence[EntityDef]) -> str:
    intents = {example.intent for example in examples}
    names = {entity.name for entity in entities}
    names.update(span.entity for example in examples for span in example.entities)
    return f"{len(intents)} intents, {len(examples)} examples, {len(names)} entities"

