"""Built-in English word lists for the synthetic corpora (no downloads).

``ADJECTIVES`` and ``NOUNS`` are common, lower-case, single English words without hyphens or
punctuation. RULER-style word keys are formed as ``"{adjective}-{noun}"`` (e.g. ``"quiet-harbor"``),
which gives ``len(ADJECTIVES) * len(NOUNS)`` distinct keys.
"""

from __future__ import annotations

ADJECTIVES: tuple[str, ...] = tuple(
    """
    able absent acid active adorable afraid agile alert alive amber ancient angry anxious aquatic
    arctic ardent arid awake awful bad bald bare basic bitter black bland blank blue blunt bold
    bored bouncy brave brief bright brisk broad broken brown bumpy busy calm careful certain cheap
    cheerful chilly chubby civil clean clear clever close cloudy clumsy coarse cold common cool
    cosmic crazy creamy crisp crooked cruel curly curved cute damp dapper dark dear decent deep
    dense dirty distant dizzy dreary dry dull dusty eager early earthy easy elated elegant empty
    endless equal even exotic faint fair fake famous fancy fast fierce filthy fine firm flaky flat
    fluffy fond foolish formal fragile free fresh friendly frozen full funny fuzzy gentle giant
    gifted glad gleaming glossy golden good grand gray great greedy green grim grumpy hairy happy
    hard harsh hasty heavy helpful hidden high hollow honest hot huge humble hungry icy idle
    immense jolly juicy keen kind large late lazy lean light little lively lonely long loose loud
    lovely loyal lucky lush mad magic major mellow merry mild minor misty modern moist moody
    narrow naughty neat nervous new nice nimble noble noisy normal numb odd old open orange
    ordinary pale patient plain plastic pleasant plump polite poor precious pretty proud purple
    quick quiet rapid rare raw ready real red rich rigid ripe rough round royal rude rural rusty
    sad safe salty scary sharp shiny short shy silent silky silly simple sleepy slim slow small
    smart smooth soft solid sour spicy splendid square stale steady steep sticky stiff still stormy
    strange strict strong sturdy subtle sudden sunny super sweet swift tall tame tart tender tense
    thick thin thirsty tidy tiny tired tough tranquil true ugly unique upbeat useful vague vast
    violet vivid warm wary weak weary wet white whole wicked wide wild windy wise witty wooden
    yellow young zany zealous
    """.split()
)

NOUNS: tuple[str, ...] = tuple(
    """
    acorn actor airport alarm album anchor angle ankle apple apron arch arm arrow artist attic
    autumn avenue baby bacon badge bagel bakery ball balloon banana band bank barn basket bat
    beach bean bear beard bed bee bell belt bench berry bicycle bird blanket blossom boat bone
    book boot bottle bowl box bread brick bridge broom brush bucket bull butter button cabin cable
    cactus cake camera camp candle canoe canyon cap car card carpet carrot castle cat cave cellar
    chair chalk cheese cherry chicken chimney circle city cliff clock cloud coat coffee coin comet
    cookie copper corn cottage cotton court cow crab crane crayon creek crow crown cup curtain
    daisy dance deer desert desk diamond dinner dog doll dolphin door dragon drawer dream drum duck
    eagle earth egg elbow engine falcon farm feather fence fern field finger fire fish flag flame
    flower flute fog forest fork fountain fox frog garden gate ghost giraffe glass glove goat
    grape grass guitar hammer harbor hat hawk heart helmet hill honey horse house iceberg island
    jacket jar jelly jewel kettle key kite kitten knife ladder lake lamp lantern leaf lemon letter
    library lily lion lizard lobster lock magnet mango map marble market meadow melon mirror monkey
    moon mountain mouse mushroom needle nest night ocean octopus office onion orchard otter owl
    paddle painter palace panda paper parrot peach pearl pebble pencil pepper piano pickle pigeon
    pillow pine pirate planet plate pocket pond potato pumpkin puppy puzzle quilt rabbit radio rain
    raven river robin rocket roof rose saddle sail salmon sand scarf school seal shadow shark sheep
    shell ship shoe shovel silver sky snail snake snow soap sock spider spoon squirrel stage star
    station stone storm stove street sugar sun swan table teapot tiger toast tomato tower town
    tractor train tree trumpet tulip tunnel turtle umbrella valley vase violin wagon wall walnut
    watch water whale wheel whistle window wolf wood yacht zebra
    """.split()
)
